"""Native-resolution patches (aoiflow.tiling): windows, stitching, scoring a canvas, a run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aoiflow import tiling
from aoiflow.config import ConfigError, build_config
from aoiflow.model import Generator
from aoiflow.predict import Inspector
from aoiflow.runs import TrainedModel
from aoiflow.scoring import images_per_batch, score_batch
from aoiflow.train import fit


def test_windows_cover_the_side_and_the_last_ends_at_the_edge():
    assert tiling.window_starts(640, 128, 96) == [0, 96, 192, 288, 384, 480, 512]
    assert tiling.window_starts(256, 128, 128) == [0, 128]
    assert tiling.window_starts(128, 128, 96) == [0]
    assert tiling.default_stride(128) == 96 and tiling.default_stride(128, 64) == 64
    with pytest.raises(ValueError, match="smaller than the 128 px window"):
        tiling.window_starts(100, 128, 96)


def test_split_then_stitch_gives_the_image_back():
    x = torch.rand(3, 2, 200, 300)
    grid = tiling.Grid.over(200, 300, 64, 48)
    windows = tiling.split(x, grid)
    assert windows.shape == (3 * grid.count, 2, 64, 64)
    assert torch.equal(windows[grid.count + 1], x[1, :, 0:64, 48:112])  # image-major order
    assert torch.equal(tiling.stitch(windows, grid), x)


def test_each_pixel_comes_from_the_window_whose_centre_is_nearest():
    grid = tiling.Grid.over(10, 4, 4, 3)  # rows start at 0, 3, 6; one column
    assert grid.ys == (0, 3, 6) and grid.xs == (0,)
    windows = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 1, 4, 4)  # window i is all i
    column = tiling.stitch(windows, grid)[0, 0, :, 0].tolist()
    # boundaries in the middle of each overlap: [0, 3) from window 0, [3, 6) from 1, [6, 10) from 2
    assert column == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_random_crops_are_windows_of_the_image_and_seeded():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    a = tiling.random_crops(x, 32, torch.Generator().manual_seed(5))
    b = tiling.random_crops(x, 32, torch.Generator().manual_seed(5))
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b)
    y0, x0 = divmod(int(a[1, 0, 0, 0]) - 64 * 64, 64)
    assert torch.equal(a[1], x[1, :, y0:y0 + 32, x0:x0 + 32])
    assert tiling.random_crops(x, 64, torch.Generator()) is x  # a window the size of the image


def test_a_canvas_scores_as_its_windows_do(tiny_config):
    """Known answer: with windows side by side (stride = window), each quarter of a 64-px canvas
    gets exactly the map its 32-px window gets alone, and L is the largest window's."""
    torch.manual_seed(0)
    g = Generator(32, 1, 16, 8).eval()
    settings = tiny_config.scoring.model_copy(update={"patch_stride": 32, "map_normalise": "none", "map_sigma": 0.0})
    canvas = torch.rand(2, 1, 64, 64)
    r, l, amap, x_hat = score_batch(g, canvas, settings)
    assert amap.shape == (2, 1, 64, 64) and x_hat.shape == (2, 1, 64, 64)
    ls = []
    for y in (0, 32):
        for x in (0, 32):
            _, lq, qmap, qrec = score_batch(g, canvas[:, :, y:y + 32, x:x + 32], settings)
            torch.testing.assert_close(amap[:, :, y:y + 32, x:x + 32], qmap)
            torch.testing.assert_close(x_hat[:, :, y:y + 32, x:x + 32], qrec)
            ls.append(lq)
    torch.testing.assert_close(l, torch.stack(ls, 1).amax(1))
    assert images_per_batch((64, 64), 32, settings, 32) == 8  # 4 windows an image


def test_a_canvas_smaller_than_the_model_is_refused_by_name():
    with pytest.raises(ConfigError, match="canvas"):
        build_config("ganomaly-ssim-ssim", overrides={"model": {"image_size": 128, "canvas": 100}})


@pytest.fixture(scope="module")
def canvas_run(module_tile_subset, tmp_path_factory, module_tiny_config):
    cfg = module_tiny_config.model_copy(deep=True)
    cfg.model.canvas = 64  # 32-px windows of a 64-px canvas
    run = tmp_path_factory.mktemp("canvas") / "run"
    fit(module_tile_subset, run, cfg, progress=False)
    return run


def test_a_canvas_run_predicts_and_exports_at_the_canvas(canvas_run, module_tile_subset, tmp_path):
    model = TrainedModel.load(canvas_run)
    assert model.config.model.input_size == 64 and model.generator.image_size == 32
    assert model.map_stats is not None and model.map_stats.mean.shape == (64, 64)  # per canvas position
    files = sorted((module_tile_subset / "test").rglob("*.jpg"))[:3]
    preds = list(Inspector.load(canvas_run).predict_files(files))
    assert all(p.status == "ok" for p in preds)
    pytest.importorskip("onnxruntime")
    from aoiflow.export import ExportedModel, export_onnx

    exported = ExportedModel(export_onnx(canvas_run, tmp_path / "canvas.onnx"))
    x = torch.rand(2, 1, 64, 64)
    r, _, _, amap = exported.score(x.numpy())
    tr, _, tmap, _ = model.score_batch(x)
    assert amap.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(r, tr.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(amap, tmap.numpy(), rtol=1e-4, atol=1e-4)
    onnx_preds = list(Inspector.load(tmp_path / "canvas.onnx").predict_files(files))
    for t, o in zip(preds, onnx_preds, strict=True):
        assert o.status == "ok" and abs(t.a - o.a) < 1e-3


def test_a_canvas_run_is_evaluated_at_the_canvas(canvas_run, module_tile_subset):
    from aoiflow.evaluate import score_test_set

    scored = score_test_set(TrainedModel.load(canvas_run), module_tile_subset, progress=False)
    assert scored.maps.shape[1:] == (64, 64)
    assert all(m is None or m.shape == (64, 64) for m in scored.masks)  # masks read at the canvas too
    assert len(scored.evaluation.per_image) == 10
