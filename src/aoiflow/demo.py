"""The main job: the whole LED inspection line on generated frames, in one report.

generate frames -> preprocess -> train the three presets -> evaluate -> HTML report comparing
them (AUROC per preset and defect kind, ms/frame, ROC curves, histograms, image panels), next to
a plain baseline (mean absolute difference to the mean normal surface) so the set's difficulty
is visible.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.config import REFERENCE_PRESETS, Config, PreprocessConfig, build_config
from aoiflow.evaluate import Evaluation, ImageResult, evaluate_run, image_hwc, load_masks
from aoiflow.report import PanelRow, ScoreSet, line_report
from aoiflow.runs import CHECKPOINT, TrainedModel
from aoiflow.scoring import anomaly_map
from aoiflow.train import fit_like, same_training

BATCH_SIZE = 16
LEARNING_RATE = 4e-4
WARMUP_CALLS = 10  # untimed: the first calls pay for allocation and kernel choice, not scoring
TIMED_CALLS = 50


def median_ms(fn: Callable[[], object], warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS) -> float:
    """Median wall-clock ms of ``calls`` calls of ``fn()``, after ``warmup`` untimed calls."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def frame_ms(run: Path, warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS) -> float:
    """ms to score one frame (batch 1: reconstruction, R, L and map) with the run's PyTorch
    generator, on as many CPU threads as the run's config says."""
    model = TrainedModel.load(run)
    s = model.config.model.input_size
    x = torch.rand(1, model.channels, s, s, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(model.config.train.threads)
    try:
        return median_ms(lambda: model.score_batch(x), warmup, calls)
    finally:
        torch.set_num_threads(before)


def mean_image_baseline(root: Path, size: int = 128) -> dict[str, float]:
    """AUROC of the mean absolute difference to the mean normal training image, overall and per kind."""
    train = data.load_images(data.train_images(root), 1, size).images
    mean = train.mean(0, keepdim=True)
    samples = data.test_samples(root)
    test = data.load_images([s.path for s in samples], 1, size)
    ok = set(test.paths)
    samples = [s for s in samples if s.path in ok]
    scores = (test.images - mean).abs().flatten(1).mean(1).numpy()
    labels = np.array([s.label for s in samples])
    out = {"all": float(roc_auc_score(labels, scores))}
    for kind in sorted({s.defect_type for s in samples if s.label}):
        sel = np.array([s.label == 0 or s.defect_type == kind for s in samples])
        out[kind] = float(roc_auc_score(labels[sel], scores[sel]))
    return out


VARYING_PRESETS = ("ganomaly-ssim-ssim", "ganomaly-ssim-head")
VARYING_HEAD_STEPS = 600  # the demo's budget for the head; `aoiflow train-head` defaults to 1500


def run_led_demo(out: Path, scale: float = 0.2, epochs: int = 80, base_width: int = 32, seed: int = 0,
                 progress: bool = True, log=print, variability: float = 0.0,
                 presets: tuple[str, ...] = REFERENCE_PRESETS, map_normalise: str | None = None,
                 varying_line: bool = False, head_steps: int = VARYING_HEAD_STEPS) -> Path:
    """Run the line end to end under ``out``; returns the report path. ``variability`` makes
    normal parts differ from each other (aoiflow.ledsynth); ``map_normalise`` overrides the scoring's.
    ``varying_line``: also run a line whose normal parts vary strongly (SSIM-SSIM beside the
    synthetic-defect head, under ``out/varying``), summarised in the main report."""
    out = Path(out)
    extra = ""
    if varying_line:
        log("a second line whose normal parts vary strongly -> " + str(out / "varying"))
        varying = _run_line(out / "varying", scale, epochs, base_width, seed, progress, log, 1.0, VARYING_PRESETS,
                            None, {"head": {"steps": head_steps}})
        extra = varying_summary(varying, "varying/report.html")
    return _run_line(out, scale, epochs, base_width, seed, progress, log, variability, presets, map_normalise,
                     extra_html=extra)


def _run_line(out: Path, scale: float, epochs: int, base_width: int, seed: int, progress: bool, log,
              variability: float, presets: tuple[str, ...], map_normalise: str | None,
              extra: dict | None = None, extra_html: str = "") -> Path:
    """One line: frames, surfaces, a run per preset, timings, the baseline and ``out/report.html``."""
    raw, surfaces = _prepare_frames(out, scale, seed, progress, log, variability)
    configs = {p: _preset_config(p, epochs, base_width, seed, map_normalise, extra) for p in presets}
    results = _train_and_evaluate(out / "runs", surfaces, configs, progress, log)
    # Timed only now, not between trainings: right after training the CPU is still busy.
    for r in results:
        r["ms_b1"] = frame_ms(out / "runs" / r["preset"])
        log(f"{r['preset']}: {r['ms_b1']:.1f} ms/frame (batch 1, median of {TIMED_CALLS} "
            f"after {WARMUP_CALLS} warm-up calls)")
    baseline = mean_image_baseline(surfaces)
    log(f"baseline (mean abs. difference to the mean normal surface): AUROC {baseline['all']:.3f}")
    settings = {**_settings(configs, scale, seed, raw, surfaces), "normal variability": f"{variability:g}",
                "map normalisation": ", ".join(sorted({c.scoring.map_normalise for c in configs.values()}))}
    threads = sorted({c.train.threads for c in configs.values()})
    timing = {"warmup": WARMUP_CALLS, "calls": TIMED_CALLS, "threads": ", ".join(map(str, threads))}
    summary = [{k: v for k, v in r.items() if k not in ("evaluation", "scores")} for r in results]
    (out / "summary.json").write_text(json.dumps({"results": summary, "baseline": baseline, "settings": settings,
                                                  "timing": timing}, indent=1, default=str))
    last = results[-1]
    panels = kind_panel_rows(out / "runs" / last["preset"], last["evaluation"], surfaces)
    return line_report(out, results, baseline, panels, settings, timing, extra_html)


def varying_summary(report: Path, link: str) -> str:
    """HTML for the main report: the varying line's results per preset, read from its summary."""
    from html import escape

    summary = json.loads((report.parent / "summary.json").read_text())
    rows = "".join(
        f"<tr><td>{escape(r['preset'])}</td><td>{r['metrics']['image_auroc']:.3f}</td>"
        f"<td>{_fmt(r['metrics'].get('pixel_auroc'))}</td>"
        f"<td>{_fmt(r['metrics'].get('false_positive_rate_at_threshold'), pct=True)}</td>"
        f"<td>{r['metrics']['calibration']['n_images']}</td><td>{r['ms_b1']:.1f}</td></tr>"
        for r in summary["results"])
    return (f"<h2>A line whose normal parts vary</h2><p>The same line with strongly varying normal parts (bond "
            f"wires, print, die offset, grain, lighting; <code>aoiflow demo --variability strong</code>): the "
            f"residual of normal variation is as high as a defect's, which the synthetic-defect head (beyond the "
            f"reference) learns to tell apart. Full report: <a href=\"{escape(link)}\">{escape(link)}</a>.</p>"
            f"<table><tr><th>preset</th><th>image AUROC</th><th>pixel AUROC</th><th>false alarms on test normals"
            f"</th><th>calibration normals</th><th>ms/frame</th></tr>{rows}</table>"
            f"<p class=\"note\">With few calibration normals a 1 % false-alarm target cannot be promised; "
            f"<code>aoiflow calibrate RUN NORMALS</code> with 99 or more new normals sets it.</p>")


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def _top_of_each_kind(ev: Evaluation) -> list[ImageResult]:
    """The highest-scoring test image of each defect kind."""
    kinds = sorted({x.defect_type for x in ev.per_image if x.label == 1})
    return [max((x for x in ev.per_image if x.defect_type == kind), key=lambda x: x.a) for kind in kinds]


def kind_panel_rows(run: Path, ev: Evaluation, data_root: Path) -> list[PanelRow]:
    """Per defect kind, its highest-scoring test frame: input, reconstruction, unsmoothed L1 and
    SSIM maps, ground truth. The few frames are scored again: evaluations keep no images."""
    model = TrainedModel.load(run)
    size = model.config.model.input_size
    chosen = {x.path: x for x in _top_of_each_kind(ev)}
    samples = {s.path: s for s in data.test_samples(data_root)}
    loaded = data.load_images(list(chosen), model.channels, size)
    x = loaded.images
    sc = model.config.scoring
    x_hat = model.score(x, keep_reconstructions=True).reconstructions
    # Both kinds of map with the run's own window and smoothing, as its scores are made.
    l1 = anomaly_map(x, x_hat, "l1", sc.ssim_window, sc.map_sigma)[:, 0].numpy()
    ssim = anomaly_map(x, x_hat, "ssim", sc.ssim_window, sc.map_sigma)[:, 0].numpy()
    masks = load_masks([samples[p] for p in loaded.paths], size)
    return [PanelRow(chosen[p].defect_type, image_hwc(x[k]), image_hwc(x_hat[k]), (l1[k], ssim[k]), masks[k])
            for k, p in enumerate(loaded.paths)]


def _train_and_evaluate(runs: Path, surfaces: Path, configs: dict[str, Config], progress: bool, log) -> list[dict]:
    """Train (or reuse, or resume) and evaluate each preset in order; one result dict per preset."""
    results = []
    previous: tuple[str, Path, Config] | None = None
    for preset, cfg in configs.items():
        run = runs / preset
        earlier = (run / CHECKPOINT).exists()  # left by an earlier call on this folder: resumed
        # SSIM-L1 and SSIM-SSIM train identically: fit_like gives the second the first's networks.
        reused = previous is not None and same_training(previous[2], cfg) and not earlier
        log(f"training {preset} ({cfg.model.image_size} px, width {cfg.model.base_width}, {cfg.train.epochs} epochs)"
            + (f": reusing the networks of {previous[0]}, calibrating only" if reused else "")
            + (": resuming the run found there" if earlier else ""))
        t0 = time.perf_counter()
        fit_like(previous[1] if previous else None, surfaces, run, cfg, progress=progress)
        train_s = time.perf_counter() - t0
        metrics, ev = evaluate_run(run, surfaces, progress=progress)
        results.append({"preset": preset, "metrics": metrics, "train_s": train_s, "evaluation": ev,
                        "scores": ScoreSet(ev.labels, ev.a, ev.threshold),
                        "report": run / "eval" / "report.html", "reused_from": previous[0] if reused else None,
                        "resumed": earlier})
        log(f"  image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.3f}")
        previous = (preset, run, cfg)
    return results


def _prepare_frames(out: Path, scale: float, seed: int, progress: bool, log,
                    variability: float = 0.0) -> tuple[Path, Path]:
    """Generated frames and their surface maps under ``out`` (kept from an earlier call with the
    same generator settings; a call with other settings is refused rather than mixed)."""
    from aoiflow.ledsynth import make_led_dataset
    from aoiflow.preprocess import preprocess_folder

    raw, surfaces = out / "frames", out / "surfaces"
    spec = {"scale": scale, "seed": seed, "variability": variability}
    made = raw / "generator.json"
    if (raw / "train").is_dir() and made.is_file() and json.loads(made.read_text()) != spec:
        raise data.DataLayoutError(f"{raw} holds frames generated with {made.read_text().strip()}; choose another --out")
    if not (raw / "train").is_dir():
        log(f"generating LED frames (scale {scale}, variability {variability:g}) -> {raw}")
        make_led_dataset(raw, scale=scale, seed=seed, progress=progress, variability=variability)
        made.write_text(json.dumps(spec))
    if not (surfaces / "outlines.csv").is_file():
        log(f"preprocessing -> {surfaces}")
        preprocess_folder(raw, surfaces, PreprocessConfig(size=256), progress=progress)
    return raw, surfaces


def _preset_config(preset: str, epochs: int, base_width: int, seed: int, map_normalise: str | None = None,
                   extra: dict | None = None) -> Config:
    """The demo's budget for ``preset``; ``extra`` adds sections (e.g. the head's steps)."""
    return build_config(preset, overrides={
        "model": {"base_width": base_width}, "scoring": {"map_normalise": map_normalise},
        "train": {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "seed": seed}, **(extra or {})})


def _frame_counts(root: Path) -> tuple[int, int, int]:
    """Training images, normal test images, defective test images of an MVTec-layout folder."""
    test = data.test_samples(root)
    defective = sum(s.label for s in test)
    return len(data.train_images(root)), len(test) - defective, defective


def _settings(configs: dict[str, Config], scale: float, seed: int, raw: Path, surfaces: Path) -> dict[str, object]:
    """What the report states the demo ran with, read from the configs and folders actually used."""
    first = next(iter(configs.values()))
    frames = _frame_counts(raw)
    used = _frame_counts(surfaces)
    lost = sum(frames) - sum(used)
    return {
        "epochs per preset": first.train.epochs,
        "batch size": first.train.batch_size,
        "learning rate": f"{first.train.lr:g}",
        "image size (px)": ", ".join(f"{p} {c.model.image_size}" for p, c in configs.items()),
        "base width": first.model.base_width,
        "frames": f"{frames[0]} training (normal); test {frames[1]} normal + {frames[2]} defective"
                  + (f"; {lost} without a usable part dropped by preprocessing" if lost else ""),
        "scale": f"{scale:g} (fraction of the reference LED split)",
        "seed": seed,
        "CPU threads": first.train.threads,
    }
