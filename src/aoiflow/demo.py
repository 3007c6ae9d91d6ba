"""The main job: the whole LED inspection line on generated frames, in one report.

generate frames -> preprocess -> train the three presets -> evaluate -> HTML report comparing
them (AUROC per preset and defect kind, ms/frame, ROC curves, histograms, image panels), next to
a plain baseline (mean absolute difference to the mean normal surface) so the set's difficulty
is visible.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.config import PRESET_NAMES, PreprocessConfig, build_config
from aoiflow.evaluate import evaluate_run, scoring_ms
from aoiflow.runs import TrainedModel
from aoiflow.train import fit_like


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
    from aoiflow.ledsynth import make_led_dataset
    from aoiflow.preprocess import preprocess_folder
    from aoiflow.report import line_report

    raw, surfaces = out / "frames", out / "surfaces"
    if not (raw / "train").is_dir():
        log(f"generating LED frames (scale {scale}) -> {raw}")
        make_led_dataset(raw, scale=scale, seed=seed, progress=progress)
    if not (surfaces / "outlines.csv").is_file():
        log(f"preprocessing -> {surfaces}")
        preprocess_folder(raw, surfaces, PreprocessConfig(size=256), progress=progress)
    results = []
    previous: Path | None = None
    for preset in PRESET_NAMES:
        run = out / "runs" / preset
        cfg = build_config(preset, overrides={"model": {"base_width": base_width},
                                              "train": {"epochs": epochs, "batch_size": 16, "lr": 4e-4, "seed": seed}})
        log(f"training {preset} ({cfg.model.image_size} px, width {base_width}, {epochs} epochs)")
        t0 = time.perf_counter()
        # SSIM-L1 and SSIM-SSIM train identically: the second reuses the first's networks.
        fit_like(previous, surfaces, run, cfg, progress=progress)
        previous = run
        train_s = time.perf_counter() - t0
        metrics, ev = evaluate_run(run, surfaces, progress=progress)
        results.append({"preset": preset, "metrics": metrics, "train_s": train_s, "evaluation": ev,
                        "ms_b1": scoring_ms(TrainedModel.load(run))})
        log(f"  image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.3f}")
    baseline = mean_image_baseline(surfaces)
    log(f"baseline (mean abs. difference to the mean normal surface): AUROC {baseline['all']:.3f}")
    summary = [{k: v for k, v in r.items() if k != "evaluation"} for r in results]
    (out / "summary.json").write_text(json.dumps({"results": summary, "baseline": baseline}, indent=1, default=str))
    return line_report(out, results, baseline)
