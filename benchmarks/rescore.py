"""Score finished benchmark runs again with other scoring settings (no retraining).

    .venv/bin/python benchmarks/rescore.py runs/bench/magnetictile_tile/ganomaly-ssim-ssim ../shared/data/magnetictile_tile

For each variant the normalisation and threshold are re-measured on the run's held-out normals;
prints image and pixel AUROC per variant.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from aoiflow.evaluate import compute_metrics, recalibrate, score_test_set
from aoiflow.runs import TrainedModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--scores", nargs="+", default=["l1", "ssim"])
    ap.add_argument("--poolings", nargs="+", default=["mean", "topk"])
    ap.add_argument("--lams", nargs="+", type=float, default=None)
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0.0], help="map smoothing sigmas (pixels)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = TrainedModel.load(args.run)
    lams = args.lams or [model.config.scoring.lam]
    print(f"run {args.run} (epoch {model.epoch}, preset {model.config.preset})")
    print("| score | pooling | λ | map σ | image AUROC | pixel AUROC | AUROC R | AUROC L |")
    print("|---|---|---|---|---|---|---|---|")
    for score, pooling, lam, sigma in itertools.product(args.scores, args.poolings, lams, args.sigmas):
        settings = model.config.scoring.model_copy(
            update={"score": score, "pooling": pooling, "lam": lam, "map_sigma": sigma})
        m = compute_metrics(score_test_set(recalibrate(model, args.data, settings), args.data, progress=False))
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {score} | {pooling} | {lam} | {sigma} | {fmt(m['image_auroc'])} | {fmt(m['pixel_auroc'])} | "
              f"{fmt(m['image_auroc_R_only'])} | {fmt(m['image_auroc_L_only'])} |", flush=True)


if __name__ == "__main__":
    main()
