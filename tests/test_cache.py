"""The prepared-slice cache: reused, rebuilt when corrupted or garbled, invalidated when
sources change, keyed by size, split seed and fold."""

import os
import struct
import types
import zipfile

import pytest
import torch

from segbench import data as datasets
from segbench.data import cache as cache_file
from segbench.data.base import DataError, PreparedDataset, Split


def _counting_build(builds, nan=False):
    def build(arg, image_size, seed, folds=1, fold=0):
        builds.append(seed)
        g = torch.Generator().manual_seed(seed)

        def split(n):
            images = torch.randn(n, 1, image_size, image_size, generator=g)
            if nan:
                images[0, 0, 0, 0] = float("nan")
            masks = torch.randint(0, 2, (n, image_size, image_size), generator=g)
            return Split(images, masks)

        return PreparedDataset("counting", ["background", "thing"],
                               {"train": split(6), "val": split(5), "test": split(5)}, "test data")
    return build


@pytest.fixture
def counting_dataset(tmp_path, monkeypatch):
    source = tmp_path / "volume.raw"
    source.write_bytes(b"first version")
    builds = []
    module = types.SimpleNamespace(build=_counting_build(builds), source_files=lambda arg: [source])
    monkeypatch.setitem(datasets.DATASETS, "counting", module)
    return source, builds, tmp_path / "cache"


def test_second_load_reads_the_cache(counting_dataset):
    _, builds, cache = counting_dataset
    first, state = datasets.prepare_dataset("counting", 16, seed=1, cache_dir=cache)
    second, again = datasets.prepare_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1] and (state, again) == ("built", "read from the cache")
    for name in ("train", "val", "test"):
        assert torch.equal(first.splits[name].images, second.splits[name].images)
        assert torch.equal(first.splits[name].masks, second.splits[name].masks)
        assert second.splits[name].masks.dtype == torch.int64
        assert first.splits[name].groups == second.splits[name].groups


def test_corrupted_cache_is_rebuilt(counting_dataset, capsys):
    _, builds, cache = counting_dataset
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    (cached,) = cache.iterdir()
    cached.write_bytes(b"not a torch file")
    rebuilt = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1, 1] and len(rebuilt.splits["train"]) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreadable" in err[0] and "rebuilding" in err[0]


def garble_tensor_bytes(path, count=14):
    """Flip `count` bytes in the middle of the largest tensor record of a torch zip file,
    leaving the zip and pickle headers alone."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", raw, record.header_offset + 26)
    middle = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
    raw[middle:middle + count] = bytes(b ^ 0xFF for b in raw[middle:middle + count])
    path.write_bytes(bytes(raw))


def test_garbled_tensor_bytes_fail_the_checksum_and_are_rebuilt(counting_dataset, capsys):
    _, builds, cache = counting_dataset
    clean = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    (cached,) = cache.iterdir()
    garble_tensor_bytes(cached)
    torch.load(cached, weights_only=True)  # the garbling passes torch.load unnoticed
    capsys.readouterr()
    rebuilt, state = datasets.prepare_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1, 1] and state.startswith("rebuilt: the cache failed its checksum")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed its checksum" in err[0] and "rebuilding" in err[0]
    assert torch.equal(rebuilt.splits["train"].images, clean.splits["train"].images)


def test_data_check_reports_the_rebuild_of_a_garbled_cache(counting_dataset, capsys):
    from segbench.data.check import summarize

    _, _, cache = counting_dataset
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    (cached,) = cache.iterdir()
    garble_tensor_bytes(cached)
    first_line = summarize("counting", 16, 1, cache_dir=cache).splitlines()[0]
    assert first_line.startswith("dataset counting: rebuilt from its sources, because the "
                                 "cache failed its checksum")
    assert "checks passed" not in first_line
    again = summarize("counting", 16, 1, cache_dir=cache).splitlines()[0]
    assert again == "dataset counting: checks passed (data read from the cache)"


def test_nan_in_built_data_is_an_error_and_in_a_cached_file_a_rebuild(counting_dataset,
                                                                      monkeypatch, capsys):
    source, builds, cache = counting_dataset
    broken = types.SimpleNamespace(build=_counting_build(builds, nan=True),
                                   source_files=lambda arg: [source])
    monkeypatch.setitem(datasets.DATASETS, "counting", broken)
    with pytest.raises(DataError, match="1 NaN or Inf values in the train images"):
        datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    # a cache file with NaN and a valid checksum (written by a buggy version, say)
    path = datasets._cache_path(cache, "counting", None, 16, 1, 1, 0)
    cache_file.save(_counting_build([], nan=True)(None, 16, 1), path)
    monkeypatch.setitem(datasets.DATASETS, "counting",
                        types.SimpleNamespace(build=_counting_build(builds),
                                              source_files=lambda arg: [source]))
    capsys.readouterr()
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert "fails the checks" in capsys.readouterr().err and len(builds) == 2


def test_changed_source_invalidates_the_cache(counting_dataset):
    source, builds, cache = counting_dataset
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    source.write_bytes(b"second, longer version")
    datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert builds == [1, 1]


def test_size_seed_and_fold_are_part_of_the_key(counting_dataset):
    _, builds, cache = counting_dataset
    for size, seed, folds, fold in [(16, 1, 1, 0), (32, 1, 1, 0), (16, 2, 1, 0), (16, 1, 1, 0),
                                    (16, 1, 2, 0), (16, 1, 2, 1), (16, 1, 3, 0), (16, 1, 2, 1)]:
        datasets.load_dataset("counting", size, seed=seed, cache_dir=cache, folds=folds,
                              fold=fold)
    assert builds == [1, 1, 2, 1, 1, 1]
    assert len(list(cache.iterdir())) == 6


@pytest.mark.parametrize("make_link, problem", [
    (lambda link: os.symlink(link, link), "symbolic link loop"),
    (lambda link: os.symlink(link.parent / "gone.png", link), "dangling symbolic link"),
])
def test_bad_symlink_among_the_sources_is_one_line(counting_dataset, monkeypatch, make_link,
                                                   problem):
    source, builds, cache = counting_dataset
    link = source.parent / "link.png"
    make_link(link)
    module = types.SimpleNamespace(build=_counting_build(builds),
                                   source_files=lambda arg: [source, link])
    monkeypatch.setitem(datasets.DATASETS, "counting", module)
    with pytest.raises(DataError, match=problem) as error:
        datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert "link.png" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("failure", [
    lambda: __import__("numpy").empty(2**62, "uint8"),
    lambda: torch.empty(2**62, dtype=torch.uint8),
])
def test_allocation_failure_while_preparing_is_a_clear_memory_error(counting_dataset,
                                                                    monkeypatch, failure):
    source, _, cache = counting_dataset

    def build(arg, image_size, seed, folds=1, fold=0):
        failure()

    module = types.SimpleNamespace(build=build, source_files=lambda arg: [source],
                                   estimate_bytes=lambda arg, size: 5 * 2**30)
    monkeypatch.setitem(datasets.DATASETS, "counting", module)
    with pytest.raises(MemoryError) as error:
        datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    message = str(error.value)
    assert type(error.value) is MemoryError and "\n" not in message
    assert "out of memory while preparing" in message and "about 5.0 GiB" in message
    assert "smaller --image-size" in message


def test_a_full_disk_costs_the_cache_not_the_load(counting_dataset, monkeypatch, capsys):
    import errno

    _, builds, cache = counting_dataset

    def full_disk(obj, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_file.torch, "save", full_disk)
    dataset = datasets.load_dataset("counting", 16, seed=1, cache_dir=cache)
    assert len(dataset.splits["test"]) == 5 and builds == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write the cache" in err[0]
    assert "No space left on device" in err[0]
    assert list(cache.iterdir()) == []  # no partial temporary file left behind
