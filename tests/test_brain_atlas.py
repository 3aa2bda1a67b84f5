import pytest
import torch

from segbench.data import DataError, brain_atlas

INSTALLED = all((brain_atlas.TEMPLATES / name).is_file() for name in brain_atlas.FILES.values())
needs_package = pytest.mark.skipif(
    not INSTALLED, reason="brain-atlas needs the Debian package mricron-data "
                          "(apt-get install -y mricron-data)")


def test_missing_package_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(brain_atlas, "TEMPLATES", tmp_path)
    with pytest.raises(DataError, match="apt-get install -y mricron-data") as error:
        brain_atlas.source_files()
    assert "\n" not in str(error.value)


def test_region_names_map_to_lobes():
    assert brain_atlas.lobe_of_region("Frontal_Sup_Orb_L") == "frontal"
    assert brain_atlas.lobe_of_region("Hippocampus_R") == "limbic"
    assert brain_atlas.lobe_of_region("Fusiform_L") == "temporal"
    assert brain_atlas.lobe_of_region("Vermis_4_5") == "cerebellum"
    with pytest.raises(DataError, match="'Brainstem' belongs to no lobe"):
        brain_atlas.lobe_of_region("Brainstem")


@needs_package
def test_every_aal_region_has_a_lobe_and_every_lobe_regions():
    names = brain_atlas.read_region_names(brain_atlas.TEMPLATES / "aal.nii.txt")
    assert len(names) == 116
    lookup = brain_atlas.lobe_lookup(names)
    assert lookup[0] == 0
    assert set(lookup[1:].tolist()) == set(range(1, len(brain_atlas.CLASS_NAMES)))


@needs_package
def test_build_gives_sensible_classes_and_slab_split():
    dataset = brain_atlas.build(None, 32, seed=0)
    assert dataset.class_names[0] == "background" and dataset.num_classes == 8
    train = torch.bincount(dataset.splits["train"].masks.flatten(), minlength=8).numpy()
    frequency = train / train.sum()
    assert 0.5 < frequency[0] < 0.9
    assert (frequency[1:] > 0.002).all()
    assert frequency[1] == frequency[1:].max()  # frontal is the largest lobe
    for counts in dataset.facts["slices_per_orientation"].values():
        assert counts["train"] > 5 * counts["val"] and counts["test"] > counts["val"]
    # 1 mm voxels: each slice's pixel is its own orientation's longer in-plane side / 32
    shape = dataset.facts["volume_shape_cropped"]
    expected = {o: max(s for a, s in enumerate(shape) if a != axis) / 32
                for axis, o in enumerate(("sagittal", "coronal", "axial"))}
    for split in dataset.splits.values():
        for group, (dy, dx) in zip(split.groups, split.spacing_mm.tolist(), strict=True):
            assert dy == dx == pytest.approx(expected[group.split("/")[0]])
    assert dataset.spacing_mm is None  # the orientations differ
