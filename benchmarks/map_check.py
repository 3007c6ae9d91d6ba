"""Where a run's map finds the test defects, per defect kind, and whether averaging the maps of
several runs (an ensemble) would help, judged on validation first.

    .venv/bin/python benchmarks/map_check.py ../shared/data/magnetictile_tile runs/tile_bf16 runs/tile_bf16_s1

Per run and kind: pixel AUROC (the kind's images and the normal ones), PRO, the kind's share of all
defect pixels, and the median ratio of fine horizontal detail inside a defect's mask to outside it
(a defect that changes a surface's grain rather than its brightness shows as a ratio away from 1).
Then every combination of the runs, their maps averaged (each smoothed and pooled as the first
run scores): the validation (the first run's held-out
normals clean and with painted defects, as ``pooling_check.py``) beside the test's image and pixel
AUROC and PRO. Maps are smoothed and pooled as the runs score (``scoring.map_sigma``, top-k).
With ``--sigmas``, the first run's map smoothing is judged for localisation: the painted
validation's pixel AUROC (painted pixels against the rest) beside the test's pixel AUROC and PRO.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from aoiflow import data
from aoiflow.evaluate import load_masks, localisation_metrics, pixel_auroc
from aoiflow.runs import TrainedModel
from aoiflow.scoring import pool_map
from aoiflow.ssim import gaussian_blur
from pooling_check import painted_validation, raw_maps

DETAIL_WIDTH = 9  # pixels of the horizontal box blur that fine detail is measured against


def fine_detail(images: torch.Tensor) -> torch.Tensor:
    """|x - horizontal box blur of x|: (N, C, S, S) -> (N, S, S), the grain a smear would remove."""
    k = DETAIL_WIDTH
    blurred = F.avg_pool2d(images, (1, k), 1, (0, k // 2), count_include_pad=False)
    return (images - blurred).abs().mean(1)


def localisation(maps: np.ndarray, masks: list, labels: np.ndarray, idx: list[int]) -> tuple[float, float]:
    """Pixel AUROC and PRO of maps (N, S, S) over images ``idx``, as ``aoiflow test`` computes
    them; NaN where no defect image there has a mask."""
    maps, masks, labels = [maps[i] for i in idx], [masks[i] for i in idx], labels[idx].tolist()
    pix, _ = pixel_auroc(maps, masks, labels)
    pro = localisation_metrics(maps, masks, labels, [False] * len(idx), None).get("pro_30")
    return (float("nan") if pix is None else pix), (float("nan") if pro is None else pro)


def per_kind_table(name: str, maps: np.ndarray, masks: list, labels: np.ndarray, kinds: np.ndarray,
                   detail: torch.Tensor) -> None:
    total = sum(int(masks[i].sum()) for i in range(len(masks)) if labels[i] and masks[i] is not None)
    if total == 0:
        print(f"\n{name}: no defect image has a mask; nothing to localise")
        return
    print(f"\n{name}: per defect kind\n| kind | pixel AUROC | PRO | share of defect pixels | detail inside / outside |")
    print("|---|---|---|---|---|")
    for kind in sorted(set(kinds.tolist()) - {"good"}):
        idx = [i for i in range(len(kinds)) if kinds[i] in (kind, "good")]
        pix, pro = localisation(maps, masks, labels, idx)
        own = [i for i in idx if labels[i] and masks[i] is not None and 50 < masks[i].sum() < masks[i].size - 50]
        ratios = [float(detail[i][torch.from_numpy(masks[i])].mean() / detail[i][~torch.from_numpy(masks[i])].mean())
                  for i in own]
        share = sum(int(masks[i].sum()) for i in idx if labels[i] and masks[i] is not None) / total
        ratio = f"{np.median(ratios):.2f}" if ratios else "–"
        print(f"| {kind} | {pix:.3f} | {pro:.3f} | {share:.0%} | {ratio} |")


def smoothing_table(raw_val: torch.Tensor, raw_test: torch.Tensor, val_labels: np.ndarray, val_masks: torch.Tensor,
                    masks: list, labels: np.ndarray, sigmas: list[float], current: float) -> None:
    """Localisation of one run's unsmoothed maps at each smoothing; ``current``: the run's own (*)."""
    truth = [m[0].numpy() > 0 for m in val_masks]
    print("\nmap smoothing (first run) for localisation\n| map σ | validation pixel AUROC | test pixel AUROC | PRO |")
    print("|---|---|---|---|")
    for sigma in sigmas:
        v, t = gaussian_blur(raw_val, sigma)[:, 0].numpy(), gaussian_blur(raw_test, sigma)[:, 0].numpy()
        val_pix, _ = pixel_auroc(list(v), truth, val_labels.astype(int).tolist())
        pix, pro = localisation(t, masks, labels, list(range(len(labels))))
        mark = " *" if sigma == current else ""
        print(f"| {sigma:g}{mark} | {val_pix:.3f} | {pix:.3f} | {pro:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=3, help="paintings of each held-out normal")
    ap.add_argument("--sigmas", nargs="*", type=float, default=[], help="map smoothings to judge for localisation")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = [TrainedModel.load(r) for r in args.runs]
    size = models[0].config.model.input_size
    if any(m.config.model.input_size != size for m in models):
        raise SystemExit("the runs must score at the same input size")
    samples = data.test_samples(args.data)
    loaded = data.load_images([s.path for s in samples], models[0].channels, size)
    kept = {p: i for i, p in enumerate(loaded.paths)}
    samples = [s for s in samples if s.path in kept]
    labels = np.array([s.label for s in samples])
    kinds = np.array([s.defect_type if s.label else "good" for s in samples])
    masks = load_masks(samples, size)
    val_images, val_labels, val_masks = painted_validation(models[0], Path(models[0].data_root), args.rounds)
    sigma, fraction = models[0].config.scoring.map_sigma, models[0].config.scoring.topk_fraction
    raw_test = [raw_maps(m, loaded.images) for m in models]  # each run scores each image once
    raw_val = [raw_maps(m, val_images) for m in models]
    test_maps, val_maps = [gaussian_blur(t, sigma) for t in raw_test], [gaussian_blur(v, sigma) for v in raw_val]
    detail = fine_detail(loaded.images)
    for run, maps in zip(args.runs, test_maps):
        per_kind_table(str(run), maps[:, 0].numpy(), masks, labels, kinds, detail)
    if args.sigmas:
        smoothing_table(raw_val[0], raw_test[0], val_labels, val_masks, masks, labels, args.sigmas, sigma)
    print("\nmaps averaged over runs\n| runs | validation image AUROC | test image AUROC | pixel AUROC | PRO |")
    print("|---|---|---|---|---|")
    everything = list(range(len(samples)))
    for k in range(1, len(models) + 1):
        for combo in itertools.combinations(range(len(models)), k):
            t = torch.stack([test_maps[i] for i in combo]).mean(0)
            v = torch.stack([val_maps[i] for i in combo]).mean(0)
            val_auroc = roc_auc_score(val_labels, pool_map(v, "topk", fraction).numpy())
            test_auroc = roc_auc_score(labels, pool_map(t, "topk", fraction).numpy())
            pix, pro = localisation(t[:, 0].numpy(), masks, labels, everything)
            names = " + ".join(args.runs[i].name for i in combo)
            print(f"| {names} | {val_auroc:.3f} | {test_auroc:.3f} | {pix:.3f} | {pro:.3f} |", flush=True)


if __name__ == "__main__":
    main()
