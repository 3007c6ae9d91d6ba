"""A new product with few normals: does a step budget with augmentation make a small set converge?

    .venv/bin/python benchmarks/small_set.py [--set magnetictile_tile] [--n 70] [--min-steps 600]
        [--augment hflip vflip] [--out runs/small]

Takes a seeded subset of ``--n`` normal training images of a shared set (linked, not copied, into
OUT/data with the set's full test folder), then trains SSIM-SSIM (128 px, width 32, batch 16,
lr 4e-4) twice: 15 epochs as the README's CPU budget (about 60 optimiser steps for 70 images),
and with ``train.min_steps`` plus ``train.augment``. Prints the held-out normals' contextual loss
at the first and last epoch, the optimiser steps, training seconds and the test image AUROC.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from aoiflow.config import build_config
from aoiflow.evaluate import evaluate
from aoiflow.runs import load_checkpoint
from aoiflow.train import fit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def subset(source: Path, out: Path, n: int, seed: int = 0) -> Path:
    """OUT/data: n training normals of ``source`` and its whole test (and ground-truth) folders, as links."""
    root = out / "data"
    if (root / "train" / "good").is_dir():
        return root
    good = sorted((source / "train" / "good").iterdir())
    picked = random.Random(seed).sample(good, n)
    (root / "train" / "good").mkdir(parents=True)
    for p in picked:
        (root / "train" / "good" / p.name).symlink_to(p.resolve())
    for name in ("test", "ground_truth", "annotations_bbox"):
        if (source / name).is_dir():
            (root / name).symlink_to((source / name).resolve())
    return root


def train_and_test(root: Path, run: Path, overrides: dict) -> dict:
    cfg = build_config("ganomaly-ssim-ssim", overrides={
        "model": {"base_width": 32}, "train": {"epochs": 15, "batch_size": 16, "lr": 4e-4, "seed": 0, **overrides}})
    if not (run / "model.pt").is_file():
        fit(root, run, cfg, resume=(run / "checkpoint.pt").is_file(), progress=False)
    ckpt = load_checkpoint(run)
    history = ckpt["history"]
    metrics = evaluate(run, root, progress=False)
    steps = len(history) * -(-len(ckpt["split"]["train"]) // cfg.train.batch_size)  # ceil: the last batch is short
    return {"epochs": len(history), "steps": steps, "val_con_first": history[0]["val_con"],
            "val_con_last": history[-1]["val_con"], "train_s": sum(r["seconds"] for r in history),
            "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="magnetictile_tile")
    ap.add_argument("--n", type=int, default=70)
    ap.add_argument("--min-steps", type=int, default=600)
    ap.add_argument("--augment", nargs="*", default=["hflip", "vflip"])
    ap.add_argument("--out", type=Path, default=Path("runs/small"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    source = SHARED / args.set
    if not source.is_dir():
        sys.exit(f"{source}: not found (the shared data sets sit beside the checkout)")
    root = subset(source, args.out, args.n)
    rows = {"15 epochs (the CPU budget)": train_and_test(root, args.out / "epochs15", {}),
            f"min_steps {args.min_steps}, augment {' '.join(args.augment) or 'none'}":
                train_and_test(root, args.out / "steps", {"min_steps": args.min_steps, "augment": args.augment})}
    print(f"\n{args.set}, {args.n} training normals (seed 0), SSIM-SSIM 128 px, width 32, batch 16, lr 4e-4")
    print("| training | epochs | steps | val contextual loss first → last | train s | image AUROC | pixel AUROC |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        pix = "–" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}"
        print(f"| {name} | {r['epochs']} | {r['steps']} | {r['val_con_first']:.3f} → {r['val_con_last']:.3f} "
              f"| {r['train_s']:.0f} | {r['image_auroc']:.3f} | {pix} |")


if __name__ == "__main__":
    main()
