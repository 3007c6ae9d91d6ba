"""Batch inspection on a local Ray instance with two workers (``aoiflow predict --engine ray``):
the CSV is the one a single process writes (same rows, order and decisions; scores to float
rounding), and the Parquet rows hold the same judgements, spread over both workers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from aoiflow.cli import app
from aoiflow.export import export_onnx
from aoiflow.train import fit

NUMBERS = ("R", "L", "A", "threshold", "confidence")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def exported_run(module_tile_subset, module_tiny_config, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fit(module_tile_subset, run, module_tiny_config, progress=False)
    export_onnx(run, run / "model.onnx")
    return run


def _images(data: Path, folder: Path, copies: int = 2) -> Path:
    """The subset's 10 test images ``copies`` times (frames from two lines: enough
    rows for several batches, so both workers get some), plus one file that is not an image."""
    for i in range(copies):
        shutil.copytree(data / "test", folder / f"line{i}")
    (folder / "line0" / "good" / "broken.png").write_bytes(b"not a png")
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _predict(*args: str) -> str:
    res = CliRunner().invoke(app, ["predict", *args, "--quiet"])
    assert res.exit_code == 0, res.output
    return res.output


def test_ray_predict_writes_the_one_process_csv_and_parquet(exported_run, module_tile_subset, tmp_path, local_ray):
    images = _images(module_tile_subset, tmp_path / "images")
    _predict(str(exported_run / "model.onnx"), str(images), "--out", str(tmp_path / "one"), "--threads", "1")
    said = _predict(str(exported_run), str(images), "--out", str(tmp_path / "ray"), "--engine", "ray",
                    "--workers", "2")
    assert "20 scored" in said and "1 not scored" in said

    rows, ray_rows = (_rows(tmp_path / d / "predictions.csv") for d in ("one", "ray"))
    # Same rows in the same order, same decisions; the scores agree to ONNX Runtime's rounding,
    # which depends on how many images share a batch (a 6th digit may differ).
    assert [r.keys() for r in ray_rows] == [r.keys() for r in rows] and len(rows) == 21
    for mine, theirs in zip(ray_rows, rows):
        assert {k: mine[k] for k in mine if k not in NUMBERS} == {k: theirs[k] for k in theirs if k not in NUMBERS}
        for k in NUMBERS:
            assert (mine[k] == theirs[k] == "") or float(mine[k]) == pytest.approx(float(theirs[k]), rel=1e-5, abs=1e-7)
    maps = sorted(p.name for p in (tmp_path / "ray" / "maps").iterdir())
    assert maps == sorted(p.name for p in (tmp_path / "one" / "maps").iterdir()) and len(maps) == 20

    table = pq.read_table(tmp_path / "ray" / "predictions.parquet").to_pandas().sort_values("index")
    assert list(table["index"]) == list(range(21))
    assert list(table["path"]) == [r["path"] for r in rows]
    assert list(table["decision"]) == [r["decision"] for r in rows]
    ok = table["status"] == "ok"
    assert ok.sum() == 20 and table.loc[~ok, "path"].str.endswith("broken.png").all()
    assert list(table.loc[ok, "A"]) == pytest.approx([float(r["A"]) for r in ray_rows if r["status"] == "ok"],
                                                      rel=1e-5)
    assert table["worker"].nunique() == 2  # both model copies judged images


def test_ray_engine_names_what_is_missing(exported_run, module_tile_subset, tmp_path):
    bare = tmp_path / "run"
    shutil.copytree(exported_run, bare, ignore=shutil.ignore_patterns("*.onnx"))
    res = CliRunner().invoke(app, ["predict", str(bare), str(module_tile_subset / "test"), "--out",
                                   str(tmp_path / "o"), "--engine", "ray"])
    assert res.exit_code == 2 and "aoiflow export" in res.output and "model.onnx" in res.output
    res = CliRunner().invoke(app, ["predict", str(exported_run), str(module_tile_subset / "test"), "--out",
                                   str(tmp_path / "o"), "--engine", "spark"])
    assert res.exit_code == 2 and "--engine 'spark'" in res.output
