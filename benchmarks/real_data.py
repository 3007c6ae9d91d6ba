"""Train and evaluate the three presets on the shared real sets; print one table.

    .venv/bin/python benchmarks/real_data.py [--epochs 15] [--batch-size 16] [--base-width 32]
        [--lr 4e-4] [--sets magnetictile_tile deeppcb_pcb] [--out runs/bench]
        [--canvas 640 [--patch-stride 96]] [--head-steps 1500] [--max-minutes 30]

``--max-minutes`` caps each run's whole training (train.max_minutes: epochs and head steps are
shortened to fit once timed); the table's "fit wall s" is what the run took in all.
``--canvas`` turns on native-resolution patches (aoiflow.tiling): images are read at that size,
the networks train on random model-size windows and score by sliding window.

Budget: the reference trains 200 epochs at batch 1; on 2 CPU cores that is days, so this runs a
stated, much smaller budget. Each preset keeps its reference image size (64 / 128 / 128 px).
Inference is timed with the generator alone plus the score and map (what ``predict`` runs),
median over repeated calls after warm-up, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aoiflow.config import PRESET_NAMES, build_config
from aoiflow.evaluate import evaluate, scoring_ms
from aoiflow.runs import TrainedModel, load_head_validation
from aoiflow.train import fit_like

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["magnetictile_tile", "deeppcb_pcb"])
    ap.add_argument("--presets", nargs="+", default=list(PRESET_NAMES))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base-width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--canvas", type=int, default=0, help="native-resolution patches: image side in px (0 = off)")
    ap.add_argument("--patch-stride", type=int, default=0, help="step between scoring windows (0 = 3/4 window)")
    ap.add_argument("--head-steps", type=int, default=None, help="head optimiser steps (head presets)")
    ap.add_argument("--max-minutes", type=float, default=0, help="cap on each run's whole training (0 = none)")
    ap.add_argument("--head-share", type=float, default=None, help="the head's share of --max-minutes (head presets)")
    ap.add_argument("--head-flips", action="store_true", help="head.flips (head presets)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the networks' convolutions in bfloat16 (CPUs with AVX-512 BF16 or AMX)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    rows = []
    for name in args.sets:
        root = SHARED / name
        if not root.is_dir():
            sys.exit(f"{root}: not found (the shared data sets sit beside the checkout)")
        previous = None
        for preset in args.presets:
            cfg = build_config(preset, overrides={
                "model": {"base_width": args.base_width, "canvas": args.canvas},
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                          "max_minutes": args.max_minutes, "precision": args.precision},
                "scoring": {"patch_stride": args.patch_stride},
                "head": {"steps": args.head_steps, "budget_share": args.head_share,
                         "flips": args.head_flips or None}})
            run = args.out / name / preset
            # fit_like reuses the previous preset's networks when training is identical (SSIM-L1 and
            # SSIM-SSIM differ only in scoring); an interrupted benchmark resumes where it stopped.
            t0 = time.perf_counter()
            fit_like(previous, root, run, cfg, progress=False)
            wall_s = time.perf_counter() - t0  # GANomaly, head and calibration (small when resumed)
            previous = run
            train_s = float(sum(float(r["seconds"]) for r in torch.load(run / "checkpoint.pt", weights_only=False)["history"]))
            m = evaluate(run, root, progress=False)
            model = TrainedModel.load(run)
            row = {"set": name, "preset": preset, "image_size": cfg.model.image_size, "canvas": cfg.model.canvas,
                   "epochs": model.config.train.epochs, "head_steps": model.config.head.steps if model.head else None,
                   "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                   "pro": m["localisation"].get("pro_30"), "fpr_at_threshold": m["false_positive_rate_at_threshold"],
                   "auroc_R": m["image_auroc_R_only"], "auroc_L": m["image_auroc_L_only"],
                   "f1": m["f1_at_threshold"], "train_s": train_s,  # summed epoch times from the history (shared when networks are reused)
                   "fit_wall_s": wall_s,
                   "head_val": load_head_validation(run),  # painted defects on held-out normals (not test data)
                   "ms_b1": scoring_ms(model, 1, 50), "ms_b32": scoring_ms(model, 32, 5)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\nbudget: {args.epochs} epochs, batch {args.batch_size}, base width {args.base_width}, lr {args.lr}, "
          f"seed {args.seed}, canvas {args.canvas or 'off'}, 2 threads")
    print("| set | preset | px | canvas | epochs | head steps | head val px/img | image AUROC | pixel AUROC | PRO "
          "| AUROC R only | AUROC L only | F1@thr | FPR@thr | GANomaly s | fit wall s | ms/img b1 | ms/img b32 |")
    print("|" + "---|" * 18)
    for r in rows:
        print(f"| {r['set']} | {r['preset']} | {r['image_size']} | {r['canvas'] or '–'} | {r['epochs']} | "
              f"{r['head_steps'] or '–'} | {_head_val(r['head_val'])} | {fmt(r['image_auroc'])} | "
              f"{fmt(r['pixel_auroc'])} | {fmt(r['pro'])} | {fmt(r['auroc_R'])} | {fmt(r['auroc_L'])} | {fmt(r['f1'])} | "
              f"{fmt(r['fpr_at_threshold'])} | {r['train_s']:.0f} | {r['fit_wall_s']:.0f} | {r['ms_b1']:.1f} | {r['ms_b32']:.1f} |")


def _head_val(result: dict | None) -> str:
    return "–" if result is None else f"{result['pixel_auroc']:.3f} / {result['image_auroc']:.3f}"


if __name__ == "__main__":
    main()
