"""Scoring choices compared on validation data, then reported on the held-back test: same networks.

    .venv/bin/python benchmarks/scoring_ablation.py RUN [RUN ...] [--val-fraction 0.2]

For each run (trained with scoring.map_normalise: none), the image AUROC of A with the run's own
scoring and with per-position map normalisation (statistics from up to 256 training normals;
calibration from the run's held-out normals). Validation = the held-out normals + a seeded
``--val-fraction`` of each defect type in DATA/test (the parameter search's split); the test
columns use the remaining test images. Choose on the validation columns; the test columns say
what the choice was worth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.calibrate import combined_score
from aoiflow.runs import TrainedModel
from aoiflow.evaluate import recalibrate
from aoiflow.tune import TuneSettings, validation_set


def scored(model: TrainedModel, paths: list[Path]) -> np.ndarray:
    loaded = data.load_images(paths, model.channels, model.config.model.input_size)
    s = model.score(loaded.images)
    return combined_score(s.r, s.l, model.calibration, model.config.scoring.lam)


def variant(model: TrainedModel, mode: str) -> TrainedModel:
    """The same networks scored with ``map_normalise: mode``, statistics and calibration refitted."""
    return recalibrate(model, model.data_root, model.config.scoring.model_copy(update={"map_normalise": mode}))


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| run | map_normalise | validation AUROC | test AUROC (rest) | validation: normals + anomalies |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        base = TrainedModel.load(run)
        root = Path(base.data_root)
        split = validation_set(root, TuneSettings(val_fraction=args.val_fraction))
        samples = data.test_samples(root)
        test_good = [s.path for s in samples if s.label == 0]
        test_bad = [s.path for s in samples if s.label == 1 and s.path.resolve() not in split.excluded_from_test]
        val_good = [root / p for p in base.split["val"]]
        for mode in ("none", "position"):
            model = variant(base, mode)
            v = auroc(scored(model, val_good), scored(model, split.anomalies))
            t = auroc(scored(model, test_good), scored(model, test_bad))
            print(f"| {run} | {mode} | {v:.3f} | {t:.3f} | {len(val_good)} + {len(split.anomalies)} |", flush=True)


if __name__ == "__main__":
    main()
