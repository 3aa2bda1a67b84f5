import numpy as np
import pytest

from segbench.data import brain_tissue
from segbench.data.slicing import SLABS, slab_assignment


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
