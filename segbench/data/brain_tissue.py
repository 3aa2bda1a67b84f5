"""`brain-tissue`: real brain MRI shipped inside the nilearn wheel, readable offline.

The ICBM152 2009a nonlinear symmetric T1 template (1 mm, skull-stripped) and its grey- and
white-matter probability maps. Classes: background (outside the template's brain mask), CSF
and other non-GM/WM brain tissue (inside the mask, probability 1 - p_GM - p_WM), grey matter,
white matter; each voxel takes its most probable class after resizing.

Slices come in all three orientations. Within each orientation the brain's slice range is cut
into ten contiguous slabs, and whole slabs go to train (7), val (1) and test (2), chosen by the
seed (or, with K folds, fold k's slabs are the test split); one slice at each boundary between
slabs of different splits is dropped, so neighbouring slices never straddle a split. Each slice
carries its slab ("coronal/4") and its pixel size in mm from the template's voxel size and the
slice's own in-plane sides. Caveat, stated in every run: this is one (average) brain, so
the task measures fitting capacity on one anatomy; and a test slice of one orientation crosses
training slices of the other two along a line of voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.data.base import DataError, PreparedDataset, prepared_bytes
from segbench.data.slicing import ORIENTATIONS, slab_assignment, slab_split_slices, split_rule

__all__ = ["ORIENTATIONS", "build", "estimate_bytes", "load_volumes", "slab_assignment",
           "source_files"]

CLASS_NAMES = ["background", "csf_other", "grey_matter", "white_matter"]
FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MIN_BRAIN_FRACTION = 0.05  # slices with less brain than this are left out


def source_files(arg: str | None = None) -> list[Path]:
    try:
        import nilearn.datasets
    except ImportError as e:
        raise DataError("dataset 'brain-tissue' needs nilearn (pip install nilearn)") from e
    folder = Path(nilearn.datasets.__file__).parent / "data"
    paths = [folder / name for name in FILES.values()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"dataset 'brain-tissue': nilearn lacks {missing[0]}; "
                        "reinstall nilearn>=0.10")
    return paths


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def voxel_mm() -> tuple[float, float, float]:
    """The template's voxel sides in mm, from the T1 file's header."""
    import nibabel as nib

    return tuple(float(z) for z in nib.load(str(source_files()[0])).header.get_zooms()[:3])


def estimate_bytes(arg: str | None, image_size: int) -> int:
    """Peak bytes of `build`, from the T1 header alone: the volumes read (T1, GM, WM and the
    class probabilities, float32) and twice the prepared slices (gathered, then stacked) when
    every slice of every orientation is kept (an upper bound)."""
    import nibabel as nib

    shape = nib.load(str(source_files()[0])).shape[:3]
    voxels = int(np.prod(shape))
    return 8 * 4 * voxels + 2 * prepared_bytes(sum(shape), 1, image_size)


def load_volumes() -> tuple[np.ndarray, np.ndarray]:
    """The normalised T1 (z-score over brain voxels) and class probabilities (4, X, Y, Z),
    cropped to the brain's bounding box with a 2-voxel margin."""
    t1, gm, wm = (_read(p) for p in source_files())
    brain = t1 > 0
    gm, wm = gm / 255.0 * brain, wm / 255.0 * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    probabilities = np.stack([~brain, csf, gm, wm]).astype(np.float32)
    t1 = ((t1 - t1[brain].mean()) / t1[brain].std()).astype(np.float32)
    box = tuple(slice(max(i.min() - 2, 0), i.max() + 3) for i in np.nonzero(brain))
    return t1[box], probabilities[(slice(None), *box)]


def build(arg: str | None, image_size: int, seed: int, folds: int = 1,
          fold: int = 0) -> PreparedDataset:
    if arg:
        raise DataError(f"dataset 'brain-tissue' takes no argument, got {arg!r}")
    t1, probabilities = load_volumes()
    splits, facts = slab_split_slices(t1[None], probabilities, image_size,
                                      np.random.default_rng(seed), MIN_BRAIN_FRACTION,
                                      voxel_mm(), folds, fold, "brain-tissue")
    return PreparedDataset(
        name="brain-tissue",
        class_names=list(CLASS_NAMES),
        splits=splits,
        description=(
            "ICBM152 2009a nonlinear symmetric T1 template with GM/WM probability maps "
            "(files shipped in the nilearn wheel); classes background/CSF-other/GM/WM by "
            f"maximum probability; 2D slices in 3 orientations; {split_rule(folds, fold)}, "
            "boundary slices dropped; one brain: measures fitting capacity "
            "on one anatomy, and test slices cross training slices of the other orientations"
        ),
        facts={"slices_per_orientation": facts, "volume_shape_cropped": list(t1.shape),
               "voxel_mm": list(voxel_mm()), "split_rule": split_rule(folds, fold)},
    )
