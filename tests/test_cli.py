"""The command line end to end, as a user runs it (a real subprocess for the main path)."""

import csv
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from aoiflow.cli import app

runner = CliRunner()


def _aoiflow(*args):
    return subprocess.run([sys.executable, "-m", "aoiflow.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def tiny_yaml(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump({
        "preset": "ganomaly-ssim-ssim",
        "model": {"base_width": 8, "latent_size": 16},
        "train": {"val_fraction": 0.25},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}}))
    return f


def test_train_test_predict_on_real_images(tile_subset, tmp_path, tiny_yaml):
    run = tmp_path / "run"
    r = _aoiflow("train", tile_subset, "--out", run, "--config", tiny_yaml, "--epochs", 1,
                 "--batch-size", 4, "--image-size", 32, "--seed", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["model"]["image_size"] == 32 and saved["model"]["base_width"] == 8

    r = _aoiflow("test", run, tile_subset, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "image_auroc" in r.stdout and "report.html" in r.stdout

    folder = tmp_path / "new"
    folder.mkdir()
    for p in sorted((tile_subset / "test" / "blowhole").glob("*.jpg"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "empty.png").write_bytes(b"")
    r = _aoiflow("predict", run, folder, "--out", tmp_path / "pred", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "empty.png" in r.stderr and "file is empty" in r.stderr
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [row["status"] for row in rows] == ["error", "ok", "ok"]
    for row in rows[1:]:
        assert row["decision"] in {"normal", "anomalous"} and (tmp_path / "pred" / row["map"]).is_file()


def test_existing_run_needs_resume(tile_subset, tmp_path, tiny_yaml):
    args = ["train", str(tile_subset), "--out", str(tmp_path / "run"), "--config", str(tiny_yaml),
            "--epochs", "1", "--image-size", "32", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    more = runner.invoke(app, ["train", str(tile_subset), "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--quiet"])
    assert more.exit_code == 0, more.output
    assert "epoch" in (tmp_path / "run" / "history.csv").read_text() and len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("args, needle", [
    (["train", "{tmp}/nowhere", "--out", "{tmp}/r"], "nowhere: data folder not found"),
    (["train", "{tmp}", "--out", "{tmp}/r", "--image-size", "100"], "power of two"),
    (["train", "{tmp}", "--out", "{tmp}/r", "--preset", "ganomaly-x"], "unknown preset"),
    (["test", "{tmp}/norun", "{tmp}"], "run folder not found"),
    (["predict", "{tmp}/norun", "{tmp}", "--out", "{tmp}/p"], "run folder not found"),
])
def test_bad_input_gives_a_clear_error(tmp_path, args, needle):
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert needle in result.output


def test_led_line_raw_frames_to_verdicts(tmp_path):
    raw, surfaces = tmp_path / "raw", tmp_path / "surfaces"
    assert runner.invoke(app, ["synth", str(raw), "--scale", "0.03", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["preprocess", str(raw), str(surfaces), "--size", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "0 skipped" in result.output
    result = runner.invoke(app, ["train", str(surfaces), "--out", str(tmp_path / "run"), "--preset", "ganomaly-l1-l1",
                                 "--image-size", "32", "--base-width", "8", "--epochs", "1", "--batch-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["preprocess"]["enabled"] and saved["preprocess"]["size"] == 64

    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((raw / "test").rglob("*.png"))[:2]:
        (frames / p.name).write_bytes(p.read_bytes())
    from PIL import Image

    Image.new("L", (400, 300), 30).save(frames / "zz_blank.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(frames), "--out", str(tmp_path / "pred"), "--raw", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped"] and rows[2]["reason"].startswith("no part found")
    overlay = Image.open(tmp_path / "pred" / rows[0]["map"])
    assert overlay.size == (2 * 1280, 1024)  # frame and map, side by side, on the raw frame's grid

    # pre-labels straight from raw frames: regions in frame pixels, classes from the folder names
    result = runner.invoke(app, ["prelabel", str(tmp_path / "run"), str(raw / "test"), "--out", str(tmp_path / "labels"),
                                 "--raw", "--threshold", "-1e9", "--label-from-folder", "--format", "coco",
                                 "--no-review", "--quiet"])
    assert result.exit_code == 0, result.output
    import json

    coco = json.loads((tmp_path / "labels" / "coco" / "annotations.json").read_text())
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(1280, 1024)}
    names = {c["name"] for c in coco["categories"]}
    assert names <= {"defect", "good", "plate_rift", "unclean", "glue_overflow"}


def test_demo_runs_the_whole_line(tmp_path):
    from aoiflow.demo import run_led_demo

    report = run_led_demo(tmp_path / "demo", scale=0.02, epochs=1, base_width=8, progress=False, log=lambda *_: None)
    text = report.read_text()
    for preset in ("ganomaly-l1-l1", "ganomaly-ssim-l1", "ganomaly-ssim-ssim"):
        assert preset in text and (tmp_path / "demo" / "runs" / preset / "eval" / "metrics.json").is_file()
    for name in ("roc_all.png", "hist_all.png", "panels.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "baseline" in text and "glue_overflow" in text
