"""The report pages, the shared heat overlay and the demo's speed timing, on known inputs."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from aoiflow import demo, report
from aoiflow.config import build_config
from aoiflow.heatmap import heat_overlay, side_by_side

# matplotlib's inferno at 0 and at 1 (its listed end colours)
INFERNO_BOTTOM = np.array([0.001462, 0.000466, 0.013866])
INFERNO_TOP = np.array([0.988362, 0.998364, 0.644924])


def test_page_escapes_its_title_and_keeps_the_body():
    page = report.html_page('defects <b> & "marks"', "<p>kept</p>")
    assert page.startswith("<!doctype html>")
    assert "<title>defects &lt;b&gt; &amp; &quot;marks&quot;</title>" in page
    assert "<h1>defects &lt;b&gt; &amp; &quot;marks&quot;</h1>" in page
    assert "<p>kept</p>" in page and "<b>" not in page


def test_relative_href_is_posix_and_quoted(tmp_path):
    target = tmp_path / "runs" / "a b#1" / "eval" / "report.html"
    assert report.relative_href(target, tmp_path) == "runs/a%20b%231/eval/report.html"
    assert report.relative_href(tmp_path / "x.html", tmp_path / "sub") == "../x.html"


def _fake_scores() -> report.ScoreSet:
    """Six test images: two normal, two of each defect kind; defects score higher."""
    return report.ScoreSet(np.array([0, 0, 1, 1, 1, 1]), np.array([0.1, 0.3, 0.9, 0.5, 0.8, 0.7]), 0.4)


def _fake_panels(seed: int) -> list[report.PanelRow]:
    """One 16x16 grey frame per defect kind (no ground truth for one): input, reconstruction, L1
    and SSIM-like maps."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, mask in (("dirt", None), ("rift", rng.random((16, 16)) > 0.8)):
        image = rng.random((16, 16, 1), dtype=np.float32)
        rows.append(report.PanelRow(kind, image, image * 0.9, (0.1 * image[..., 0], rng.random((16, 16))), mask))
    return rows


def _result(tmp_path: Path, preset: str, reused_from: str | None, resumed: bool = False) -> dict:
    own = tmp_path / "runs" / preset / "eval" / "report.html"
    own.parent.mkdir(parents=True)
    own.write_text("<html></html>")
    per_kind = {"dirt": {"image_auroc": 1.0}, "rift": {"image_auroc": 1.0}}
    return {"preset": preset, "metrics": {"image_auroc": 1.0, "pixel_auroc": None, "per_defect_type": per_kind},
            "train_s": 3.2, "ms_b1": 6.25, "scores": _fake_scores(), "report": own,
            "reused_from": reused_from, "resumed": resumed}


def test_line_report_links_each_run_report_and_states_settings_and_timing(tmp_path):
    results = [_result(tmp_path, "ganomaly-l1-l1", None, resumed=True), _result(tmp_path, "ganomaly-ssim-l1", None),
               _result(tmp_path, "ganomaly-ssim-ssim", "ganomaly-ssim-l1")]
    settings = {"epochs per preset": 2, "base width": "<8>"}
    page = report.line_report(tmp_path, results, {"all": 0.5, "dirt": 0.6, "rift": 0.4}, _fake_panels(0), settings,
                              {"warmup": 10, "calls": 50, "threads": 2}).read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs == [f"runs/{p}/eval/report.html" for p in ("ganomaly-l1-l1", "ganomaly-ssim-l1", "ganomaly-ssim-ssim")]
    assert all(os.path.isfile(tmp_path / h) for h in hrefs)  # the relative links resolve
    assert "<th>base width</th><td>&lt;8&gt;</td>" in page and "<th>epochs per preset</th><td>2</td>" in page
    assert "10 untimed warm-up calls" in page and "median of 50 timed calls" in page
    assert "benchmarks/speed.py" in page
    assert "<td>3*</td>" in page and "ganomaly-ssim-ssim reuses the trained networks of ganomaly-ssim-l1" in page
    assert "<td>3†</td>" in page and "† ganomaly-l1-l1: a run left in this folder" in page
    for name in ("roc_all.png", "hist_all.png", "panels.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_panel_rows_need_a_map_for_every_column(tmp_path):
    image = np.zeros((8, 8, 1))
    row = report.PanelRow("dirt", image, image, (np.zeros((8, 8)),))
    with pytest.raises(ValueError, match="2 map"):
        report.panel_plot([row], tmp_path / "p.png", report.KIND_MAP_COLUMNS)
    with pytest.raises(ValueError, match="at least one row"):
        report.panel_plot([], tmp_path / "p.png")
    report.panel_plot([row], tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size[0] > 100


def test_map_panel_has_a_colour_bar_with_the_value_scale():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._show_map(ax, np.zeros((8, 8)), "map", 0.25, "1 − SSIM")
    assert len(fig.axes) == 2  # the map and its colour bar
    bar = fig.axes[1]
    assert bar.get_ylim() == pytest.approx((0.0, 0.25)) and bar.get_ylabel() == "1 − SSIM"
    plt.close(fig)


def test_overlay_of_a_zero_map_is_the_dimmed_image_and_of_vmax_the_top_colour():
    grey = np.full((2, 3, 1), 0.5)
    amap = np.array([[0.0, 0.0, 0.0], [0.2, 0.4, 9.0]])  # 0.2 is vmax; above it stays at the top colour
    over = heat_overlay(grey, amap, vmax=0.2)
    assert over.shape == (2, 3, 3)
    np.testing.assert_allclose(over[0, 0], 0.55 * 0.5 + 0.45 * INFERNO_BOTTOM, atol=1e-6)
    np.testing.assert_allclose(over[1, 0], 0.55 * 0.5 + 0.45 * INFERNO_TOP, atol=1e-6)
    np.testing.assert_allclose(over[1, 2], over[1, 0])
    left, right = side_by_side(grey, amap, 0.2)
    assert left.dtype == np.uint8 and (left == 128).all()  # 127.5 rounds up
    assert right[1, 0].tolist() == [round(255 * (0.275 + 0.45 * c)) for c in INFERNO_TOP]


def test_predict_overlay_png_uses_the_shared_overlay(tmp_path):
    from aoiflow.predict import overlay_png

    colour = np.zeros((4, 5, 3))
    colour[..., 0] = 1.0
    amap = np.zeros((4, 5))
    amap[2, 3] = 1.0
    overlay_png(colour, amap, 1.0, tmp_path / "m.png")
    img = np.asarray(Image.open(tmp_path / "m.png"))
    assert img.shape == (4, 10, 3)
    assert img[0, 0].tolist() == [255, 0, 0]
    expected = np.round(255 * (0.55 * np.array([1.0, 0, 0]) + 0.45 * INFERNO_TOP)).astype(int)
    assert img[2, 5 + 3].tolist() == expected.tolist()


def test_review_sheet_right_half_is_the_shared_overlay(tmp_path):
    from aoiflow.predict import Prediction
    from aoiflow.prelabel import LabelledImage, review_sheet

    rng = np.random.default_rng(0)
    original = rng.random((40, 50, 1))
    amap = rng.random((40, 50)) * 0.3
    pred = Prediction(Path("x.png"), "ok", a=0.1, decision="normal", anomaly_map=amap, original=original)
    review_sheet(LabelledImage(Path("x.png"), 50, 40, pred, []), tmp_path / "r.png", vmax=0.3)
    sheet = np.asarray(Image.open(tmp_path / "r.png"))
    left, right = side_by_side(original, amap, 0.3)
    assert sheet.shape == (22 + 40, 100, 3)  # banner above the pair
    np.testing.assert_array_equal(sheet[22:, :50], left)
    np.testing.assert_array_equal(sheet[22:, 50:], right)


def test_median_ms_leaves_warm_up_calls_untimed():
    calls = []

    def slow_at_first():
        calls.append(1)
        if len(calls) <= 3:
            time.sleep(0.05)

    ms = demo.median_ms(slow_at_first, warmup=3, calls=5)
    assert len(calls) == 8
    assert ms < 20  # the 50 ms warm-up calls are not in the median


def test_frame_ms_scores_one_frame_on_the_runs_threads(monkeypatch, tmp_path):
    cfg = build_config("ganomaly-l1-l1", overrides={"train": {"threads": 1}})
    seen = []
    fake = SimpleNamespace(config=cfg, channels=1,
                           score_batch=lambda x: seen.append((torch.get_num_threads(), tuple(x.shape))))
    monkeypatch.setattr(demo.TrainedModel, "load", lambda run: fake)
    torch.set_num_threads(2)
    demo.frame_ms(tmp_path, warmup=4, calls=6)
    assert seen == [(1, (1, 1, 64, 64))] * 10
    assert torch.get_num_threads() == 2  # restored afterwards
