"""The command line end to end, as a user runs it (a real subprocess for the main path)."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from aoiflow.cli import app
from aoiflow.runs import TrainedModel

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

    coco = json.loads((tmp_path / "labels" / "coco" / "annotations.json").read_text())
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(1280, 1024)}
    names = {c["name"] for c in coco["categories"]}
    assert names <= {"defect", "good", "plate_rift", "unclean", "glue_overflow"}


def test_demo_runs_the_whole_line(tmp_path):
    from aoiflow.demo import run_led_demo

    report = run_led_demo(tmp_path / "demo", scale=0.02, epochs=1, base_width=8, progress=False, log=lambda *_: None,
                          varying_line=True, head_steps=3)
    text = report.read_text()
    for preset in ("ganomaly-l1-l1", "ganomaly-ssim-l1", "ganomaly-ssim-ssim"):
        assert preset in text and (tmp_path / "demo" / "runs" / preset / "eval" / "metrics.json").is_file()
    for name in ("roc_all.png", "hist_all.png", "panels.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "baseline" in text and "glue_overflow" in text
    # the second line: strongly varying normals, SSIM-SSIM beside the head, linked from the main report
    varying = tmp_path / "demo" / "varying"
    assert '<a href="varying/report.html">' in text and (varying / "report.html").is_file()
    assert json.loads((varying / "frames" / "generator.json").read_text())["variability"] == 1.0
    head_run = TrainedModel.load(varying / "runs" / "ganomaly-ssim-head")
    assert head_run.head is not None and head_run.config.head.steps == 3
    assert text.count("ganomaly-ssim-head") >= 1 and "A line whose normal parts vary" in text


# --- help, defaults and flag errors -------------------------------------------------------------

USAGE = {"train": "DATA", "test": "RUN DATA", "tune": "DATA", "predict": "RUN TARGET", "prelabel": "RUN IMAGES",
         "preprocess": "RAW OUT", "synth": "OUT", "export": "RUN", "demo": ""}


def _help(*command):
    """The help page as one line of words: rich's boxes and wrapping removed."""
    result = runner.invoke(app, [*command, "--help"], prog_name="aoiflow")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


@pytest.mark.parametrize("command", [[], *([c] for c in USAGE)])
def test_help_shows_no_type_for_switches_and_no_braces(command):
    text = _help(*command)
    assert "<bool>" not in text and "{" not in text
    assert "--help Show this message and exit." in text
    if command:
        assert f"Usage: aoiflow {command[0]} [OPTIONS] {USAGE[command[0]]}".strip() in text
        assert "--quiet no progress bars" in text or command == ["export"]


def test_help_states_the_defaults():
    train = _help("train")
    assert ("--preset <str> one of: ganomaly-l1-l1, ganomaly-ssim-l1, ganomaly-ssim-ssim (the reference system's), "
            "ganomaly-ssim-head (beyond it: a head trained on synthetic defects) (default ganomaly-ssim-ssim)") in train
    assert "--epochs <int> training epochs (default 200)" in train
    assert "--batch-size <int> images per step (default 1)" in train
    assert "--image-size <int> model input size, a power of two from 32 to 256 (default 128; ganomaly-l1-l1: 64)" in train
    assert "--base-width <int> channels of the first conv layer (default 64)" in train
    assert "--threads <int> CPU threads for torch (default 2);" in train and "slow each other 3-10x" in train
    assert "--max-pixels <int> refuse images with more pixels than this; default 64000000" in train
    assert "--epochs <int> training epochs per trial (default 200;" in _help("tune")


def test_the_pixel_limit_in_help_is_the_library_default():
    from aoiflow import cli, data

    assert cli.DEFAULT_MAX_PIXELS == data.DEFAULT_MAX_PIXELS


def test_a_bad_flag_value_names_the_flag(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--epochs", "0"])
    assert result.exit_code == 2
    assert result.output == "error: --epochs: Input should be greater than or equal to 1\n"


def test_a_bad_file_value_names_the_file_and_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 0}}))
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(f)])
    assert result.exit_code == 2
    assert result.output == f"error: {f}: train.epochs: Input should be greater than or equal to 1\n"
    # a flag that was given replaces the file's bad value: the run gets as far as the (missing) images
    fixed = runner.invoke(app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--config", str(f),
                                "--epochs", "1"])
    assert fixed.exit_code == 2 and "train.epochs" not in fixed.output and "data folder not found" in fixed.output


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--max-pixels", "3")])
def test_counts_below_their_minimum_are_refused(tmp_path, flag, value):
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p"), flag, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}': must be at least" in result.output


# --- threads, pixel limit, overwrite, Ctrl-C ---------------------------------------------------

@pytest.fixture
def tiny_images(tmp_path):
    """Eight 32x32 grey noise images in DATA/train/good: enough to train one epoch in seconds."""
    import numpy as np
    from PIL import Image

    good = tmp_path / "tiny" / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((rng.random((32, 32)) * 60 + 100).astype("uint8")).save(good / f"{i}.png")
    return tmp_path / "tiny"


@pytest.fixture
def default_pixel_limit():
    from aoiflow import data

    yield
    data.set_max_pixels(data.DEFAULT_MAX_PIXELS)  # the limit is process-wide: leave it as found


def test_threads_reach_torch_and_overwrite_and_pixel_limit(tiny_images, tmp_path, tiny_yaml, default_pixel_limit):
    import torch

    run, pred, good = tmp_path / "run", tmp_path / "pred", str(tiny_images / "train" / "good")
    result = runner.invoke(app, ["train", str(tiny_images), "--out", str(run), "--config", str(tiny_yaml), "--epochs", "1",
                                 "--image-size", "32", "--batch-size", "4", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1 and yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 1

    result = runner.invoke(app, ["predict", str(run), good, "--out", str(pred), "--threads", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 3

    again = runner.invoke(app, ["predict", str(run), good, "--out", str(pred), "--quiet"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    refused = runner.invoke(app, ["predict", str(run), good, "--out", str(pred), "--overwrite", "--max-pixels", "1000",
                                  "--quiet"])
    assert refused.exit_code == 2 and "1,024 pixels is over the limit of 1,000" in refused.output


@pytest.mark.parametrize("command", [
    ["train", "{tmp}/none", "--out", "{tmp}/r"], ["test", "{tmp}/norun", "{tmp}"], ["tune", "{tmp}/none", "--out", "{tmp}/t"],
    ["predict", "{tmp}/norun", "{tmp}", "--out", "{tmp}/p"], ["prelabel", "{tmp}/norun", "{tmp}", "--out", "{tmp}/p"],
    ["preprocess", "{tmp}/none", "{tmp}/o"]])
def test_every_reading_command_sets_the_pixel_limit(tmp_path, monkeypatch, command):
    from aoiflow import data

    limits = []
    monkeypatch.setattr(data, "set_max_pixels", limits.append)
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in command] + ["--max-pixels", "5000"])
    assert result.exit_code == 2, result.output  # the folders are missing: a known error, after the limit was set
    assert limits == [5000]


@pytest.mark.parametrize("command, patch", [
    (["test", "{tmp}/run", "{tmp}"], "aoiflow.evaluate.evaluate"),
    (["prelabel", "{tmp}/run", "{tmp}", "--out", "{tmp}/p"], "aoiflow.predict.Inspector.load")])
def test_threads_reach_the_model_loading_commands(tmp_path, monkeypatch, command, patch):
    from aoiflow.runs import RunError

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise RunError("stop here")

    monkeypatch.setattr(patch, record)
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in command] + ["--threads", "3"])
    assert result.exit_code == 2 and result.output == "error: stop here\n"
    assert seen["threads"] == 3


def test_export_sets_the_threads(tmp_path):
    import torch

    result = runner.invoke(app, ["export", str(tmp_path / "norun"), "--threads", "3"])
    assert result.exit_code == 2 and "run folder not found" in result.output
    assert torch.get_num_threads() == 3


def test_ctrl_c_during_training_says_how_to_resume(tmp_path, monkeypatch):
    import aoiflow.train as train

    message = f"interrupted: 1 of 2 epochs finished and are saved in {tmp_path}; continue with `aoiflow train ... --resume`"

    def interrupted(*args, **kwargs):
        raise train.TrainingInterrupted(message)

    monkeypatch.setattr(train, "fit", interrupted)
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 130
    assert result.output == message + "\n"


# --- serve: the new-kind rule's settings --------------------------------------------------------

@pytest.fixture
def serve_settings(monkeypatch):
    """The ServiceSettings each `serve` built; the model load stops it there (no server starts)."""
    from aoiflow.runs import RunError
    from aoiflow.service import pipeline

    seen = []

    def loader(settings):
        seen.append(settings)
        raise RunError("stop here")

    monkeypatch.setattr(pipeline, "default_loader", loader)
    return seen


def test_serve_new_kind_flags_reach_the_settings(tmp_path, serve_settings):
    from aoiflow.service.settings import ServiceSettings

    flags = {"--new-kind-group": ("new_kind_k", 4), "--new-kind-window": ("new_kind_window", 300),
             "--new-kind-margin": ("new_kind_margin", 2.5), "--new-kind-min-samples": ("new_kind_min_samples", 6),
             "--new-kind-min-normals": ("new_kind_min_normals", 80), "--new-kind-passing": ("new_kind_passing", 900),
             "--new-kind-labelled": ("new_kind_labelled", 2000), "--new-kind-refit-every": ("new_kind_refit_every", 50)}
    defaults = ServiceSettings(run=tmp_path)
    assert all(getattr(defaults, field) != value for field, value in flags.values())  # each flag changes something
    given = [str(a) for flag, (_, value) in flags.items() for a in (flag, value)]
    for args in (["--no-new-kind", *given], []):
        result = runner.invoke(app, ["serve", "--run", str(tmp_path), *args])
        assert result.exit_code == 2 and result.output == "error: stop here\n"
    changed, untouched = serve_settings
    assert not changed.new_kind
    assert {field: getattr(changed, field) for field, _ in flags.values()} == dict(flags.values())
    assert untouched == defaults  # flags not given leave the settings' own defaults


@pytest.mark.parametrize("args, message", [
    (["--new-kind-group", "1"], "--new-kind-group: Input should be greater than or equal to 2"),
    (["--new-kind-refit-every", "0"], "--new-kind-refit-every: Input should be greater than or equal to 1"),
    (["--new-kind-margin", "0.5"], "--new-kind-margin: Input should be greater than or equal to 1"),
    (["--new-kind-group", "20", "--new-kind-window", "10"],
     "--new-kind-window (10) must be at least --new-kind-group (20)"),
    (["--new-kind-min-normals", "600"], "--new-kind-passing (500) must be at least --new-kind-min-normals (600)"),
    (["--new-kind-min-samples", "30", "--new-kind-labelled", "20"],
     "--new-kind-labelled (20) must be at least --new-kind-min-samples (30)"),
])
def test_serve_refuses_bad_new_kind_values_naming_the_flag(tmp_path, serve_settings, args, message):
    result = runner.invoke(app, ["serve", "--run", str(tmp_path), *args])
    assert result.exit_code == 2 and result.output == f"error: {message}\n"
    assert serve_settings == []  # refused before the model is loaded


def test_head_steps_flag_is_checked_and_reaches_the_config(tmp_path):
    refused = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--preset",
                                  "ganomaly-ssim-head", "--head-steps", "0"])
    assert refused.exit_code == 2 and "Invalid value for '--head-steps': must be at least 1" in refused.output
    from aoiflow.cli import _config

    cfg = _config("ganomaly-ssim-head", None, {"--head-steps": ("head.steps", 77)})
    assert cfg.head.steps == 77 and cfg.head.max_defect_area == 0.5


def test_head_share_flag_is_checked_and_reaches_the_config(tmp_path):
    from aoiflow.cli import _config

    cfg = _config("ganomaly-ssim-head", None, {"--head-share": ("head.budget_share", 0.5)})
    assert cfg.head.budget_share == 0.5
    (tmp_path / "train" / "good").mkdir(parents=True)
    refused = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--preset",
                                  "ganomaly-ssim-head", "--head-share", "1.5"])
    assert refused.exit_code == 2 and "--head-share: Input should be less than 1" in refused.output


def test_head_flips_flag_reaches_the_config():
    from aoiflow.cli import _config

    assert _config("ganomaly-ssim-head", None, {"--head-flips": ("head.flips", True)}).head.flips is True
    assert _config("ganomaly-ssim-head", None, {"--head-flips": ("head.flips", None)}).head.flips is False
    assert "--head-flips" in runner.invoke(app, ["train", "--help"]).output
    assert "--flips" in runner.invoke(app, ["train-head", "--help"]).output


def test_precision_flags_are_checked_and_reach_the_config(tmp_path):
    from aoiflow.cli import _config

    cfg = _config("ganomaly-ssim-head", None, {"--precision": ("train.precision", "bf16")})
    assert cfg.train.precision == "bf16"
    (tmp_path / "train" / "good").mkdir(parents=True)
    refused = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--precision", "fp16"])
    assert refused.exit_code == 2 and "--precision: Input should be 'fp32' or 'bf16'" in refused.output
    no_run = runner.invoke(app, ["train-head", str(tmp_path / "r"), "--max-minutes", "-1"])
    assert no_run.exit_code == 2 and "train-head: max_minutes -1.0: must be above 0" in no_run.output
