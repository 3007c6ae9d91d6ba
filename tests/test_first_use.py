"""What a new user hits: huge images, lost or mixed results, unsafe checkpoints, resume and Ctrl-C."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aoiflow import data
from aoiflow.cli import app
from aoiflow.evaluate import evaluate
from aoiflow.predict import Inspector, predict_to_folder
from aoiflow.runs import CHECKPOINT, MODEL, RunError, TrainedModel, load_checkpoint
from aoiflow.train import TrainingInterrupted, fit


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit all-black PNG written row by row, so a huge one costs only its compressed bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """30000 x 30000 pixels in about 100 KB: over twice Pillow's own limit."""
    return write_blank_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 30000, 30000)


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    """10000 x 10000 pixels in about 12 KB: under Pillow's limit, over aoiflow's default."""
    return write_blank_png(tmp_path_factory.mktemp("huge") / "huge.png", 10000, 10000)


@pytest.fixture
def pixel_limit():
    yield data.set_max_pixels
    data.set_max_pixels(data.DEFAULT_MAX_PIXELS)


@pytest.fixture(scope="module")
def tile_run(module_tile_subset, module_tiny_config, tmp_path_factory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("runs") / "run"
    fit(module_tile_subset, run, module_tiny_config, progress=False)
    return module_tile_subset, run


# --- images that hurt -------------------------------------------------------------------------

def test_decompression_bomb_is_refused_by_name(bomb):
    with pytest.raises(data.ImageReadError) as err:
        data.read_image(bomb)
    assert str(bomb) in str(err.value) and "too many pixels" in str(err.value)


def test_pixel_limit_refuses_before_decoding(huge, pixel_limit):
    with pytest.raises(data.ImageReadError) as err:
        data.read_image(huge)
    assert str(huge) in str(err.value) and "10000x10000 = 100,000,000 pixels" in str(err.value)
    assert "--max-pixels" in str(err.value)
    pixel_limit(1000)
    small = write_blank_png(huge.parent / "small.png", 40, 30)
    with pytest.raises(data.ImageReadError, match="over the limit of 1,000"):
        data.read_image(small)


def test_large_image_is_decoded_reduced_for_a_small_model(huge, pixel_limit):
    pixel_limit(200_000_000)
    x, full_hw = data.load_tensor(huge, 1, 32)
    assert full_hw == (10000, 10000) and tuple(x.shape) == (1, 32, 32)
    assert float(x.abs().max()) == 0.0  # the file is all black


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16"])
def test_reduced_decoding_matches_the_full_decode(tmp_path, mode):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.random((30, 40)), np.ones((40, 40)))  # 1200 x 1600, blocks of 40 px
    if mode == "I;16":
        img = Image.fromarray((smooth * 65535).astype(np.uint16))
    else:
        img = Image.fromarray((smooth * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / "big.png"
    img.save(path)
    reduced, hw = data.load_tensor(path, 1, 64)  # 1200 // 192 = 6x reduction on the way
    arr = data.to_channels(data.read_image(path), 1)
    full = data.resize_tensor(torch.from_numpy(arr).permute(2, 0, 1)[None], 64)[0]
    assert hw == (1200, 1600)
    diff = (reduced - full).abs()[0]
    # Same picture inside; the last model pixel of a side may differ a little, where the shrink
    # factor does not divide the image size (1600 / 6).
    assert float(diff[1:-1, 1:-1].max()) < 0.02 and float(diff.mean()) < 0.003


def test_bomb_is_skipped_by_train_test_and_predict(tmp_path, tile_subset, bomb, tiny_config):
    root = tile_subset
    for sub in ("train/good", "test/good"):
        shutil.copy(bomb, root / sub / "bomb.png")
    with pytest.warns(UserWarning, match="bomb.png"):
        fit(root, tmp_path / "run", tiny_config, progress=False)
    metrics = evaluate(tmp_path / "run", root, progress=False)
    assert [s["path"] for s in metrics["skipped"]] == [str(root / "test/good/bomb.png")]
    results = predict_to_folder(Inspector.load(tmp_path / "run"), root / "test" / "good", tmp_path / "pred",
                                progress=False)
    assert [r.status for r in results] == ["error"] + ["ok"] * 4  # bomb.png sorts first
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 6 and "too many pixels" in rows[1]


# --- results that get lost or mixed -----------------------------------------------------------

def test_every_row_is_on_disk_before_a_crash(tile_run, tmp_path, monkeypatch):
    root, run = tile_run
    import aoiflow.predict as predict

    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")

    monkeypatch.setattr(predict, "overlay_png", crash_on_third)
    with pytest.raises(RuntimeError):
        predict_to_folder(Inspector.load(run), root / "test" / "good", tmp_path / "pred", progress=False)
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + the two images finished before the crash


def test_same_stem_different_suffix_get_their_own_maps(tile_run, tmp_path):
    root, run = tile_run
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((root / "test" / "good").iterdir())[0]
    bad = sorted((root / "test" / "crack").iterdir())[0]
    Image.open(good).save(folder / "x.png")
    Image.open(bad).convert("L").save(folder / "x.jpg")
    results = predict_to_folder(Inspector.load(run), folder, tmp_path / "pred", progress=False)
    maps = sorted(p.name for p in (tmp_path / "pred" / "maps").iterdir())
    assert maps == ["x_jpg_map.png", "x_png_map.png"]
    assert len({r.a for r in results}) == 2


def test_second_predict_into_the_same_folder_is_refused_unless_overwrite(tile_run, tmp_path):
    root, run = tile_run
    inspector = Inspector.load(run)
    predict_to_folder(inspector, root / "test" / "good", tmp_path / "pred", progress=False)
    with pytest.raises(data.DataLayoutError, match="not empty.*--overwrite"):
        predict_to_folder(inspector, root / "test" / "crack", tmp_path / "pred", progress=False)
    predict_to_folder(inspector, root / "test" / "crack", tmp_path / "pred", progress=False, overwrite=True)
    maps = list((tmp_path / "pred" / "maps").iterdir())
    assert len(maps) == 3  # the crack images only; the first run's four maps are gone


def test_predict_exits_non_zero_when_nothing_could_be_scored(tile_run, tmp_path):
    _, run = tile_run
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    (folder / "b.jpg").write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", str(run), str(folder), "--out", str(tmp_path / "p"), "--quiet"])
    assert result.exit_code == 2
    assert "none of the 2 images could be scored" in result.output


def test_a_data_folder_given_as_the_run_gets_the_right_advice(tile_run):
    root, _ = tile_run
    with pytest.raises(RunError) as err:
        Inspector.load(root)
    assert "data folder" in str(err.value) and f"aoiflow train {root} --out RUN" in str(err.value)


def test_resume_without_a_checkpoint_is_refused(tile_run, tmp_path, tiny_config):
    root, _ = tile_run
    with pytest.raises(RunError, match="nothing to resume"):
        fit(root, tmp_path / "empty", tiny_config, resume=True, progress=False)


def test_resume_says_where_it_continues(tile_run, tmp_path, tiny_config, capsys):
    root, run = tile_run
    shutil.copytree(run, tmp_path / "run")
    longer = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 3})})
    fit(root, tmp_path / "run", longer, resume=True, progress=True)
    assert f"resuming {tmp_path / 'run'} from epoch 2 of 3" in capsys.readouterr().out


def test_ctrl_c_keeps_finished_epochs_and_says_how_to_continue(tile_run, tmp_path, tiny_config, monkeypatch):
    root, _ = tile_run
    import aoiflow.train as train

    real_step, calls = train.train_step, []

    def interrupt_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 4:  # 9 training images at batch 4: 3 steps an epoch
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train, "train_step", interrupt_in_epoch_two)
    with pytest.raises(TrainingInterrupted) as err:
        fit(root, tmp_path / "run", tiny_config, progress=False)
    assert "1 of 2 epochs finished" in str(err.value) and "--resume" in str(err.value)
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1


def test_extending_a_run_never_raises_the_learning_rate(tile_run, tmp_path, tiny_config):
    root, run = tile_run
    shutil.copytree(run, tmp_path / "run")
    longer = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 4})})
    fit(root, tmp_path / "run", longer, resume=True, progress=False)
    lrs = [row["lr"] for row in load_checkpoint(tmp_path / "run")["history"]]
    base = tiny_config.train.lr
    # epochs 1-2 decay over 2 epochs (1, 0.5); the extension starts at the last rate used (0.5) and
    # decays to 0 at epoch 4: 0.5, 0.25
    assert lrs == pytest.approx([base, base * 0.5, base * 0.5, base * 0.25])


# --- safety -----------------------------------------------------------------------------------

class Payload(OrderedDict):
    """Stands for any pickled object; a hostile one would run code when unpickled."""


def test_checkpoint_with_a_pickled_object_is_refused(tile_run, tmp_path):
    _, run = tile_run
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    state = torch.load(run / MODEL, weights_only=True)
    state["extra"] = Payload(a=1)
    torch.save(state, hostile / MODEL)
    with pytest.raises(RunError, match="refused"):
        TrainedModel.load(hostile)


def test_outputs_are_readable_by_others_under_the_usual_umask(tile_run, tmp_path):
    root, run = tile_run
    old = os.umask(0o022)
    try:
        predict_to_folder(Inspector.load(run), root / "test" / "good", tmp_path / "pred", progress=False)
    finally:
        os.umask(old)
    files = [tmp_path / "pred" / "predictions.csv", *sorted((tmp_path / "pred" / "maps").iterdir())[:1]]
    files += [run / MODEL, run / CHECKPOINT, run / "config.yaml", run / "history.csv"]
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o644)}


def test_inference_model_file_is_small_and_enough_on_its_own(tile_run, tmp_path):
    _, run = tile_run
    assert (run / MODEL).stat().st_size < (run / CHECKPOINT).stat().st_size / 3
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / MODEL, alone / MODEL)
    a = Inspector.load(alone)
    b = Inspector.load(run)
    x = torch.rand(2, a.channels, 32, 32)
    assert np.array_equal(a.score_tensor(x)[2], b.score_tensor(x)[2])
