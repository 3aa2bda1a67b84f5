import numpy as np
import pytest
import torch

from segbench.data import brain_tissue
from segbench.data.slicing import (
    ORIENTATIONS,
    SLABS,
    slab_assignment,
    slab_of_slices,
    slab_split_slices,
)


@pytest.mark.parametrize("n_slices", [40, 133, 170])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slab_split_is_contiguous_and_drops_boundary_slices(n_slices, seed):
    splits = slab_assignment(n_slices, np.random.default_rng(seed))
    assert len(splits) == n_slices
    assert set(splits) <= {"train", "val", "test", ""}
    for name in ("train", "val", "test"):
        assert (splits == name).any()
    kept = [(i, s) for i, s in enumerate(splits) if s]
    indices_by_split = {name: {i for i, s in kept if s == name}
                        for name in ("train", "val", "test")}
    assert sum(map(len, indices_by_split.values())) == len(kept)  # no index in two splits
    for (i, s), (j, t) in zip(kept, kept[1:], strict=False):
        if s != t:  # a change of split is never between neighbouring slices
            assert j - i >= 2 and splits[i + 1] == ""
    dropped = np.nonzero(splits == "")[0]
    slab_of = np.arange(n_slices) * SLABS // n_slices
    assert all(slab_of[d] != slab_of[d - 1] for d in dropped)  # only first slices of slabs


def test_brain_tissue_uses_the_shared_slab_split():
    assert brain_tissue.slab_assignment is slab_assignment


def _two_block_volume():
    """A (32, 32, 16) volume of 0.5 x 0.5 x 1 mm voxels: block A (2x2x2 voxels) in the image,
    block B, 6 voxels (3 mm) further along y and 4 voxels (4 mm) along z, as the label."""
    shape = (32, 32, 16)
    image = np.zeros((1, *shape), np.float32)
    image[0, 10:12, 10:12, 4:6] = 1.0
    label = np.zeros(shape, bool)
    label[10:12, 16:18, 8:10] = True
    return image, np.stack([~label, label]), (0.5, 0.5, 1.0)


def test_per_slice_spacing_and_an_mm_distance_on_a_phantom_of_known_size():
    from segbench.measure.boundary import boundary_metrics

    image, probabilities, voxel_mm = _two_block_volume()
    splits, facts = slab_split_slices(image, probabilities, 16, np.random.default_rng(0), 0.0,
                                      voxel_mm)
    # every orientation's square side is 32 voxels -> 16 px: sagittal (y, z) and coronal (x, z)
    # pixels are 1 mm x 2 mm, axial (x, y) 1 mm x 1 mm
    expected = {"sagittal": (1.0, 2.0), "coronal": (1.0, 2.0), "axial": (1.0, 1.0)}
    assert {o: tuple(facts[o]["pixel_mm"]) for o in ORIENTATIONS} == expected
    both = []
    for split in splits.values():
        for index, group in enumerate(split.groups):
            assert tuple(split.spacing_mm[index].tolist()) == expected[group.split("/")[0]]
            a, b = split.images[index, 0] > 0.5, split.masks[index] == 1
            if a.any() and b.any():
                assert group.startswith("sagittal/")  # only sagittal slices cut both blocks
                assert int(a.sum()) == int(b.sum()) == 1  # 2x2 voxels -> 1 pixel, exactly
                both.append((a.long(), b.long(), split.spacing_mm[index]))
    assert both  # slice x = 11 is never a dropped first slice of a slab
    pred, target, spacing = (torch.stack(t) for t in zip(*both, strict=True))
    result = boundary_metrics(pred, target, 2, spacing_mm=spacing)
    assert result["hd95_mm"] == 5.0  # sqrt(3^2 + 4^2) mm, exactly
    assert result["hd95_px"] == pytest.approx(np.hypot(3, 2))


@pytest.mark.parametrize("folds", [2, 5, 10])
def test_slab_folds_partition_the_slabs_and_keep_the_boundary_rule(folds):
    n_slices = 133
    slab_of = slab_of_slices(n_slices)
    tested = np.zeros(SLABS, int)
    for fold in range(folds):
        splits = slab_assignment(n_slices, np.random.default_rng(3), folds, fold)
        for slab in range(SLABS):
            names = set(splits[slab_of == slab]) - {""}
            assert len(names) == 1  # a slab is never in two splits
            tested[slab] += names == {"test"}
        assert (splits == "val").any() and (splits == "train").any()
        dropped = np.nonzero(splits == "")[0]
        assert all(slab_of[d] != slab_of[d - 1] for d in dropped)
        kept = np.nonzero(splits != "")[0]
        for i, j in zip(kept, kept[1:], strict=False):
            if splits[i] != splits[j]:
                assert j - i >= 2
    assert (tested == 1).all()  # every slab is tested in exactly one fold


def test_more_folds_than_slabs_is_one_line():
    from segbench.data import DataError

    with pytest.raises(DataError, match="--folds 11 is more than its 10 slabs per orientation"):
        slab_assignment(100, np.random.default_rng(0), 11, 0, "brain-tissue")


def test_brain_tissue_fold_groups_are_slabs_in_one_split_each():
    dataset = brain_tissue.build(None, 16, seed=0, folds=5, fold=2)
    groups = {s: set(dataset.splits[s].groups) for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["test"] or groups["train"] & groups["val"]
                or groups["val"] & groups["test"])
    assert len(groups["test"]) == 3 * 2 and len(groups["val"]) == 3  # per orientation: 2, 1
    assert "fold 2 of 5" in dataset.description


def test_estimate_bytes_is_an_upper_bound_from_the_header_alone(monkeypatch):
    from segbench.data import estimate_prepared_bytes

    dataset = brain_tissue.build(None, 32, seed=0)
    prepared = sum(s.images.nbytes + s.masks.nbytes for s in dataset.splits.values())
    monkeypatch.setattr(brain_tissue, "load_volumes", lambda: pytest.fail("read the volumes"))
    estimate = estimate_prepared_bytes("brain-tissue", 32)
    assert prepared < estimate < 2**30
    assert estimate_prepared_bytes("brain-tissue", 4096) > 100 * 2**30
