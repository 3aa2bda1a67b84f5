"""`brain-atlas`: the Colin27 single-subject T1 MRI with the AAL atlas, lobes as classes.

Files from the Debian package `mricron-data` (templates/ch2.nii.gz: Colin27 T1, 1 mm, with
scalp and skull; templates/aal.nii.gz and aal.nii.txt: the 116 AAL regions on the same grid).
AAL labels grey matter only, so white matter, CSF and the head outside the brain are
background. The regions are merged, by AAL name (left and right alike), into lobes whose
borders no intensity edge marks, so the task needs spatial context:

- frontal: Precentral, Frontal_*, Rolandic_Oper, Supp_Motor_Area, Olfactory, Rectus,
  Paracentral_Lobule
- parietal: Postcentral, Parietal_*, SupraMarginal, Angular, Precuneus
- temporal: Heschl, Temporal_* (poles included), Fusiform
- occipital: Calcarine, Cuneus, Lingual, Occipital_*
- limbic: Insula, Cingulum_*, Hippocampus, ParaHippocampal, Amygdala
- deep_grey: Caudate, Putamen, Pallidum, Thalamus
- cerebellum: Cerebelum_*, Vermis_*

The volume is cropped to the atlas's bounding box plus a margin, z-scored over the head
(non-zero voxels), and sliced like brain-tissue: three orientations, slab split 7/1/2 of 10
slabs per orientation (or K folds over the slabs), boundary slices dropped, each slice with its
slab and its pixel size in mm (voxel size from the T1 header, the slice's own in-plane sides).
Caveat: one brain, as for brain-tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.data.base import DataError, PreparedDataset, prepared_bytes
from segbench.data.slicing import slab_split_slices, split_rule
from segbench.data.validate import read_or_fail

TEMPLATES = Path("/usr/share/mricron/templates")
FILES = {"t1": "ch2.nii.gz", "atlas": "aal.nii.gz", "names": "aal.nii.txt"}
LOBES = {
    "frontal": ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory",
                "Rectus", "Paracentral_Lobule"),
    "parietal": ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus"),
    "temporal": ("Heschl", "Temporal_", "Fusiform"),
    "occipital": ("Calcarine", "Cuneus", "Lingual", "Occipital_"),
    "limbic": ("Insula", "Cingulum_", "Hippocampus", "ParaHippocampal", "Amygdala"),
    "deep_grey": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "cerebellum": ("Cerebelum_", "Vermis_"),
}
CLASS_NAMES = ["background", *LOBES]
MARGIN_VOXELS = 8  # of head around the atlas's bounding box
MIN_ATLAS_FRACTION = 0.05  # slices with less labelled grey matter than this are left out


def source_files(arg: str | None = None) -> list[Path]:
    paths = [TEMPLATES / name for name in FILES.values()]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"dataset 'brain-atlas' needs {missing[0]} from the Debian package "
                        "mricron-data: apt-get install -y mricron-data")
    return paths


def lobe_of_region(region: str) -> str:
    """'Frontal_Sup_Orb_L' -> 'frontal'; an AAL name no lobe claims is an error."""
    for lobe, prefixes in LOBES.items():
        if any(region.startswith(prefix) for prefix in prefixes):
            return lobe
    raise DataError(f"AAL region {region!r} belongs to no lobe of segbench's brain-atlas mapping")


def read_region_names(path: Path) -> dict[int, str]:
    """aal.nii.txt lines 'index name code' -> {index: name}."""
    lines = read_or_fail(lambda p: p.read_text().splitlines(), path, "AAL label list")
    names = {}
    for line in filter(str.strip, lines):
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            raise DataError(f"{path}: line {line.strip()!r} is not 'index name ...'")
        names[int(fields[0])] = fields[1]
    return names


def lobe_lookup(names: dict[int, str]) -> np.ndarray:
    """Class index per AAL index (0 stays background)."""
    lookup = np.zeros(max(names) + 1, np.int64)
    for index, region in names.items():
        lookup[index] = CLASS_NAMES.index(lobe_of_region(region))
    return lookup


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return read_or_fail(lambda p: np.asarray(nib.load(str(p)).dataobj), path, "NIfTI volume")


def voxel_mm() -> tuple[float, float, float]:
    """The T1's voxel sides in mm, from its header."""
    import nibabel as nib

    path = source_files()[0]
    header = read_or_fail(lambda p: nib.load(str(p)).header, path, "NIfTI volume")
    return tuple(float(z) for z in header.get_zooms()[:3])


def estimate_bytes(arg: str | None, image_size: int) -> int:
    """Peak bytes of `build`, from the T1 header alone: the volumes read (T1 float32, atlas and
    labels int64, one-hot bool per class) and twice the prepared slices (gathered, then
    stacked) when every slice of every orientation is kept (an upper bound)."""
    import nibabel as nib

    path = source_files()[0]
    shape = read_or_fail(lambda p: nib.load(str(p)).shape[:3], path, "NIfTI volume")
    voxels = int(np.prod(shape))
    return (4 + 8 + 8 + len(CLASS_NAMES)) * voxels + 2 * prepared_bytes(sum(shape), 1, image_size)


def load_volumes() -> tuple[np.ndarray, np.ndarray]:
    """The z-scored T1 and the lobe labels, cropped around the atlas."""
    t1_path, atlas_path, names_path = source_files()
    t1, atlas = _read(t1_path).astype(np.float32), _read(atlas_path).astype(np.int64)
    if t1.shape != atlas.shape:
        raise DataError(f"{atlas_path}: grid {atlas.shape} differs from {t1_path}'s {t1.shape}")
    lookup = lobe_lookup(read_region_names(names_path))
    if atlas.max() >= len(lookup):
        raise DataError(f"{atlas_path}: region {atlas.max()} is not in {names_path}")
    box = tuple(slice(max(int(i.min()) - MARGIN_VOXELS, 0), int(i.max()) + MARGIN_VOXELS + 1)
                for i in np.nonzero(atlas))
    t1, labels = t1[box], lookup[atlas[box]]
    head = t1 > 0
    return ((t1 - t1[head].mean()) / t1[head].std()).astype(np.float32), labels


def build(arg: str | None, image_size: int, seed: int, folds: int = 1,
          fold: int = 0) -> PreparedDataset:
    if arg:
        raise DataError(f"dataset 'brain-atlas' takes no argument, got {arg!r}")
    t1, labels = load_volumes()
    one_hot = np.stack([labels == k for k in range(len(CLASS_NAMES))])
    splits, facts = slab_split_slices(t1[None], one_hot, image_size,
                                      np.random.default_rng(seed), MIN_ATLAS_FRACTION,
                                      voxel_mm(), folds, fold, "brain-atlas")
    return PreparedDataset(
        name="brain-atlas",
        class_names=list(CLASS_NAMES),
        splits=splits,
        description=(
            "Colin27 single-subject T1 (with scalp) and the AAL atlas from Debian's "
            "mricron-data; 116 AAL regions merged into 7 classes (frontal, parietal, temporal, "
            "occipital, limbic, deep grey, cerebellum; white matter and the rest background); "
            f"2D slices in 3 orientations; {split_rule(folds, fold)}, "
            "boundary slices dropped; one brain: measures fitting capacity on one anatomy"
        ),
        facts={"slices_per_orientation": facts, "volume_shape_cropped": list(t1.shape),
               "voxel_mm": list(voxel_mm()), "split_rule": split_rule(folds, fold)},
    )
