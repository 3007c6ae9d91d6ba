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
from aoiflow.config import PRESET_NAMES, Config, PreprocessConfig, build_config
from aoiflow.evaluate import evaluate_run
from aoiflow.runs import CHECKPOINT, TrainedModel
from aoiflow.scoring import score_batch
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
    s = model.config.model.image_size
    x = torch.rand(1, model.channels, s, s, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(model.config.train.threads)
    try:
        return median_ms(lambda: score_batch(model.generator, x, model.config.scoring), warmup, calls)
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


def run_led_demo(out: Path, scale: float = 0.2, epochs: int = 80, base_width: int = 32, seed: int = 0,
                 progress: bool = True, log=print) -> Path:
    """Run the line end to end under ``out``; returns the report path."""
    from aoiflow.report import line_report

    out = Path(out)
    raw, surfaces = _prepare_frames(out, scale, seed, progress, log)
    configs = {p: _preset_config(p, epochs, base_width, seed) for p in PRESET_NAMES}
    results = _train_and_evaluate(out / "runs", surfaces, configs, progress, log)
    # Timed only now, not between trainings: right after training the CPU is still busy.
    for r in results:
        r["ms_b1"] = frame_ms(out / "runs" / r["preset"])
        log(f"{r['preset']}: {r['ms_b1']:.1f} ms/frame (batch 1, median of {TIMED_CALLS} "
            f"after {WARMUP_CALLS} warm-up calls)")
    baseline = mean_image_baseline(surfaces)
    log(f"baseline (mean abs. difference to the mean normal surface): AUROC {baseline['all']:.3f}")
    settings = _settings(configs, scale, seed, raw, surfaces)
    threads = sorted({c.train.threads for c in configs.values()})
    timing = {"warmup": WARMUP_CALLS, "calls": TIMED_CALLS, "threads": ", ".join(map(str, threads))}
    summary = [{k: v for k, v in r.items() if k != "evaluation"} for r in results]
    (out / "summary.json").write_text(json.dumps({"results": summary, "baseline": baseline, "settings": settings,
                                                  "timing": timing}, indent=1, default=str))
    return line_report(out, results, baseline, settings, timing)


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
                        "report": run / "eval" / "report.html", "reused_from": previous[0] if reused else None,
                        "resumed": earlier})
        log(f"  image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.3f}")
        previous = (preset, run, cfg)
    return results


def _prepare_frames(out: Path, scale: float, seed: int, progress: bool, log) -> tuple[Path, Path]:
    """Generated frames and their surface maps under ``out`` (kept from an earlier call)."""
    from aoiflow.ledsynth import make_led_dataset
    from aoiflow.preprocess import preprocess_folder

    raw, surfaces = out / "frames", out / "surfaces"
    if not (raw / "train").is_dir():
        log(f"generating LED frames (scale {scale}) -> {raw}")
        make_led_dataset(raw, scale=scale, seed=seed, progress=progress)
    if not (surfaces / "outlines.csv").is_file():
        log(f"preprocessing -> {surfaces}")
        preprocess_folder(raw, surfaces, PreprocessConfig(size=256), progress=progress)
    return raw, surfaces


def _preset_config(preset: str, epochs: int, base_width: int, seed: int) -> Config:
    return build_config(preset, overrides={
        "model": {"base_width": base_width},
        "train": {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "seed": seed}})


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
