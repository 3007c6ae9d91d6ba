"""How the image score should pool a run's map: map smoothing (``scoring.map_sigma``) and the
share of top pixels averaged (``scoring.topk_fraction``), and, with ``--without-head``, which
residual GANomaly's own map is (``scoring.score``), judged on validation first.

    .venv/bin/python benchmarks/pooling_check.py runs/tile_bf16 ../shared/data/magnetictile_tile
    .venv/bin/python benchmarks/pooling_check.py runs/tile_bf16 ../shared/data/magnetictile_tile \
        --without-head --scores ssim ssim_multiscale --sigmas 2 --fractions 0.01

The validation is the run's held-out normals, each scored clean and, ``--rounds`` times, with a
painted defect (the head's own painter, at the size the run scores: the whole canvas for a
canvas run). Image AUROC of painted against clean is what a setting is chosen on; the test image
AUROC is printed beside it as the check. Maps are made once, unsmoothed, through the run's own
scoring; each setting then only smooths and pools them, so the grid costs little.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.runs import TrainedModel
from aoiflow.scoring import pool_map
from aoiflow.ssim import gaussian_blur
from aoiflow.synthdefect import add_synthetic_defects


def with_scoring(model: TrainedModel, **changes) -> TrainedModel:
    """A copy of ``model`` (the same networks) with ``scoring`` settings changed
    (``score="ssim_multiscale"``, ``map_sigma=0``); ``model`` itself is left as it was."""
    return dataclasses.replace(model, config=model.config.model_copy(
        update={"scoring": model.config.scoring.model_copy(update=changes)}))


def raw_maps(model: TrainedModel, images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) maps of ``images`` with no smoothing, through the run's scoring."""
    return with_scoring(model, map_sigma=0.0).score(images, keep_maps=True).maps


def painted_validation(model: TrainedModel, root: Path, rounds: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """The held-out normals clean and painted ``rounds`` times: images (N, C, H, W), labels (N,)
    and the painted pixels (N, 1, H, W)."""
    cfg = model.config
    val = data.load_images([root / p for p in model.split["val"]], model.channels, cfg.model.input_size).images
    rng = np.random.default_rng(2024)
    batches, labels, pixels = [val], [np.zeros(len(val))], [torch.zeros(len(val), 1, *val.shape[-2:])]
    for _ in range(rounds):
        painted, masks = add_synthetic_defects(val, rng, 0.999, cfg.head.max_defect_area, cfg.head.fills)
        keep = masks.flatten(1).amax(1) > 0
        batches.append(painted[keep])
        labels.append(np.ones(int(keep.sum())))
        pixels.append(masks[keep])
    return torch.cat(batches), np.concatenate(labels), torch.cat(pixels)


def test_images(model: TrainedModel, root: Path) -> tuple[torch.Tensor, np.ndarray]:
    samples = data.test_samples(root)
    loaded = data.load_images([s.path for s in samples], model.channels, model.config.model.input_size)
    label_of = {s.path: s.label for s in samples}
    return loaded.images, np.array([label_of[p] for p in loaded.paths])


def image_auroc(maps: torch.Tensor, labels: np.ndarray, sigma: float, fraction: float) -> float:
    scores = pool_map(gaussian_blur(maps, sigma), "topk", fraction).numpy()
    return float(roc_auc_score(labels, scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--rounds", type=int, default=3, help="paintings of each held-out normal")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 2.0, 4.0])
    ap.add_argument("--fractions", nargs="+", type=float, default=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1])
    ap.add_argument("--without-head", action="store_true", help="judge GANomaly's own residual map")
    ap.add_argument("--scores", nargs="+", default=None, help="residual kinds (default: the run's)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = TrainedModel.load(args.run)
    if args.without_head:
        model.head = None
    current = (model.config.scoring.score, model.config.scoring.map_sigma, model.config.scoring.topk_fraction)
    val_images, val_labels, _ = painted_validation(model, Path(model.data_root), args.rounds)
    t_images, t_labels = test_images(model, args.data)
    print(f"run {args.run}{' without its head' if args.without_head else ''}: {int((val_labels == 0).sum())} "
          f"held-out normals, {int(val_labels.sum())} painted; {len(t_labels)} test images. * = the run's setting")
    print("| residual | map σ | top-k share | validation image AUROC | test image AUROC |")
    print("|---|---|---|---|---|")
    for score in args.scores or [current[0]]:
        model = with_scoring(model, score=score)
        val_maps, t_maps = raw_maps(model, val_images), raw_maps(model, t_images)
        for sigma, fraction in itertools.product(args.sigmas, args.fractions):
            mark = " *" if (score, sigma, fraction) == current else ""
            print(f"| {score} | {sigma:g} | {fraction:g}{mark} | {image_auroc(val_maps, val_labels, sigma, fraction):.3f} "
                  f"| {image_auroc(t_maps, t_labels, sigma, fraction):.3f} |", flush=True)


if __name__ == "__main__":
    main()
