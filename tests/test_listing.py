"""`segbench list`: the default listing builds no model (committed table), other settings are
counted once with progress and then come from the cache, and every figure names its source."""

import json

import pytest

from segbench import cli, listing, models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path))
    return tmp_path


def forbid_building(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("a model was built")

    monkeypatch.setattr(models, "create_model", refuse)
    monkeypatch.setattr(listing, "count_model", refuse)


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def test_committed_table_is_of_todays_model_code():
    table = json.loads(listing.TABLE.read_text())
    assert table["code_hash"] == listing.model_code_hash(), \
        "model code changed: run `python -m segbench.listing` to recount the committed table"
    assert set(table["models"]) == set(models.list_models())


def test_default_listing_builds_no_model(cache, monkeypatch, capsys):
    forbid_building(monkeypatch)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == set(models.list_models())
    table = json.loads(listing.TABLE.read_text())["models"]
    unet = rows["unet"]
    assert unet[2] == f"{table['unet']['params'] / 1e6:.2f}" and unet[5] == "table"
    assert "- table: the committed table segbench/model_costs.json" in out
    assert list(cache.iterdir()) == []  # nothing counted, nothing cached


def test_other_settings_are_counted_with_progress_then_cached(cache, monkeypatch, capsys):
    args = ["list", "--models", "fcn-small,unet-small", "--input-size", "32", "--num-classes",
            "3"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "counting params and FLOPs of 2 model(s)" in captured.err
    assert "counting: 100%" in captured.err  # the progress bar
    first = table_rows(captured.out)
    assert [first[name][5] for name in ("fcn-small", "unet-small")] == ["counted"] * 2
    assert float(first["unet-small"][4]) > 0 and first["unet-small"][3] == "32x32"
    forbid_building(monkeypatch)
    assert cli.main(args) == 0
    again = capsys.readouterr()
    assert again.err == ""
    second = table_rows(again.out)
    for name in ("fcn-small", "unet-small"):
        assert second[name][5] == "cache" and second[name][2:5] == first[name][2:5]
    assert f"counted earlier on this machine with today's model code ({cache}" in again.out


def test_no_flops_counts_params_on_the_meta_device(cache, capsys):
    assert cli.main(["list", "--models", "unet-small", "--in-channels", "3", "--no-flops"]) == 0
    out = capsys.readouterr().out
    (unet,) = table_rows(out).values()
    assert unet[4] == "–" and unet[5] == "params only" and float(unet[2]) > 0
    assert list(cache.iterdir()) == []


def test_a_model_that_cannot_be_counted_is_named_and_not_cached(cache, monkeypatch, capsys):
    def cannot_take(name, *args, **kwargs):
        raise ValueError("input 17x17: sides must be multiples of 32\nsecond line")

    monkeypatch.setattr(models, "create_model", cannot_take)
    assert cli.main(["list", "--models", "unet-small", "--input-size", "17"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["unet-small"][2:5] == ["–", "17x17", "–"]
    assert out.endswith("Not counted (the model could not take the input):\n"
                        "- unet-small: ValueError: input 17x17: sides must be multiples of 32\n")
    assert not list(cache.rglob("*.json"))


def test_unknown_model_is_one_line(cache, capsys):
    assert cli.main(["list", "--models", "nosuchnet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segbench: error: ") and "nosuchnet" in err[0]
