"""The prepared-slice cache: reused, rebuilt when corrupted, invalidated when sources change."""

import types

import pytest
import torch

from segbench import data as datasets
from segbench.data.base import PreparedDataset, Split


@pytest.fixture
def counting_dataset(tmp_path, monkeypatch):
    source = tmp_path / "volume.raw"
    source.write_bytes(b"first version")
    builds = []

    def build(arg, image_size, seed):
        builds.append(seed)
        g = torch.Generator().manual_seed(seed)
        split = lambda n: Split(torch.randn(n, 1, image_size, image_size, generator=g),  # noqa: E731
                                torch.randint(0, 2, (n, image_size, image_size), generator=g))
        return PreparedDataset("counting", ["background", "thing"],
                               {"train": split(3), "val": split(1), "test": split(2)}, "test data")

    module = types.SimpleNamespace(build=build, source_files=lambda arg: [source])
    monkeypatch.setitem(datasets.DATASETS, "counting", module)
    return source, builds, tmp_path / "cache"


def test_second_load_reads_the_cache(counting_dataset):
    _, builds, cache = counting_dataset
    first = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    second = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1]
    torch.testing.assert_close(first.splits["test"].images, second.splits["test"].images)


def test_corrupted_cache_is_rebuilt(counting_dataset, capsys):
    _, builds, cache = counting_dataset
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    (cached,) = cache.iterdir()
    cached.write_bytes(b"not a torch file")
    rebuilt = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1, 1] and len(rebuilt.splits["train"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreadable" in err[0] and "rebuilding" in err[0]


def test_changed_source_invalidates_the_cache(counting_dataset):
    source, builds, cache = counting_dataset
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    source.write_bytes(b"second, longer version")
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1, 1]


def test_size_and_seed_are_part_of_the_key(counting_dataset):
    _, builds, cache = counting_dataset
    for size, seed in [(16, 1), (32, 1), (16, 2), (16, 1)]:
        datasets.load_dataset("counting", size, seed=seed, cache_dir=cache)
    assert builds == [1, 1, 2]
