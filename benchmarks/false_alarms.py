"""Do false-alarm rates hold? Realised rate on test normals against the target, per set.

    .venv/bin/python benchmarks/false_alarms.py [--sets magnetictile_tile deeppcb_pcb led]
        [--epochs 5] [--image-size 64] [--base-width 16] [--out runs/fa] [--draws 2000]

For each set it trains (or reuses) a SSIM-SSIM run at a small stated budget; the rate guarantee
does not depend on how good the model is, only on the normals being alike. Then, for targets of
1 % and 0.1 %, two measurements:

* as on a line: the threshold from the run's held-out normals (what `aoiflow train` stores),
  applied to the set's test/good images; beside it the old rule (99th / 99.9th percentile);
* resampled: held-out and test normals pooled, split at random ``--draws`` times into a
  calibration part of the same size as the hold-out and the rest; the mean realised rate against
  the rate the conformal rule promises for that many normals. This is the rule's own check; the
  first is the check of the data (test normals may differ from training normals). Where the pool
  allows, a second resampled row calibrates on as many normals as the target needs (99 for 1 %).

'led' generates frames with `aoiflow synth` (scale 0.4) and preprocesses them first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from aoiflow import data
from aoiflow.calibrate import (
    combined_score,
    conformal_threshold,
    fit_calibration,
    normals_needed,
)
from aoiflow.config import build_config
from aoiflow.runs import TrainedModel
from aoiflow.train import fit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGETS = (0.01, 0.001)


def led_surfaces(out: Path) -> Path:
    from aoiflow.config import PreprocessConfig
    from aoiflow.ledsynth import make_led_dataset
    from aoiflow.preprocess import preprocess_folder

    surfaces = out / "led_surfaces"
    if not (surfaces / "preprocess.yaml").is_file():
        make_led_dataset(out / "led_frames", scale=0.4, seed=0, progress=True)
        preprocess_folder(out / "led_frames", surfaces, PreprocessConfig(), progress=True)
    return surfaces


def trained_run(root: Path, run: Path, args: argparse.Namespace) -> TrainedModel:
    cfg = build_config("ganomaly-ssim-ssim", overrides={
        "model": {"base_width": args.base_width, "image_size": args.image_size},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": 4e-4, "seed": 0}})
    if not (run / "model.pt").is_file():
        fit(root, run, cfg, resume=(run / "checkpoint.pt").is_file(), progress=True)
    return TrainedModel.load(run)


def raw_scores(model: TrainedModel, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    loaded = data.load_images(paths, model.channels, model.config.model.input_size)
    s = model.score(loaded.images)
    return s.r, s.l


def as_line(model: TrainedModel, val: tuple, test: tuple, rate: float) -> dict:
    lam = model.config.scoring.lam
    cal = fit_calibration(*val, lam, rate)
    a_val, a_test = combined_score(*val, cal, lam), combined_score(*test, cal, lam)
    old = float(np.percentile(a_val, 100 * (1 - rate)))
    return {"n": cal.n_images, "expected": cal.expected_rate, "upper": cal.rate_upper,
            "realised": float((a_test > cal.threshold).mean()), "old_rule": float((a_test > old).mean()),
            "n_test": len(a_test)}


def resampled(model: TrainedModel, val: tuple, test: tuple, rate: float, draws: int, n: int, seed: int = 0) -> dict:
    lam = model.config.scoring.lam
    r, l = np.r_[val[0], test[0]], np.r_[val[1], test[1]]
    rng = np.random.default_rng(seed)
    realised, old, expected = [], [], 0.0
    for _ in range(draws):
        order = rng.permutation(len(r))
        cal_i, new_i = order[:n], order[n:]
        cal = fit_calibration(r[cal_i], l[cal_i], lam, rate)
        a = combined_score(r, l, cal, lam)
        realised.append((a[new_i] > cal.threshold).mean())
        old.append((a[new_i] > np.percentile(a[cal_i], 100 * (1 - rate))).mean())
        expected = conformal_threshold(a[cal_i], rate)[1]
    return {"expected": expected, "realised": float(np.mean(realised)), "old_rule": float(np.mean(old)),
            "se": float(np.std(realised) / np.sqrt(draws))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["magnetictile_tile", "deeppcb_pcb", "led"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--base-width", type=int, default=16)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("runs/fa"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| set | target | held-out normals | expected (95 % bound) | realised on test normals | old percentile rule "
          "| resampled: promised / realised / old rule |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets:
        root = led_surfaces(args.out) if name == "led" else SHARED / name
        if not root.is_dir():
            sys.exit(f"{root}: not found (the shared data sets sit beside the checkout)")
        model = trained_run(root, args.out / name, args)
        val = raw_scores(model, [Path(model.data_root) / p for p in model.split["val"]])
        test = raw_scores(model, data.list_images(root / "test" / "good"))
        for rate in TARGETS:
            line = as_line(model, val, test, rate)
            res = resampled(model, val, test, rate, args.draws, line["n"])
            print(f"| {name} | {rate:.1%} | {line['n']} | {line['expected']:.2%} ({line['upper']:.2%}) "
                  f"| {line['realised']:.2%} of {line['n_test']} | {line['old_rule']:.2%} "
                  f"| {res['expected']:.2%} / {res['realised']:.2%} ± {res['se']:.2%} / {res['old_rule']:.2%} |",
                  flush=True)
            pool, needed = len(val[0]) + len(test[0]), normals_needed(rate)
            if needed > line["n"] and pool - needed >= 30:  # enough normals pooled to meet the target
                res = resampled(model, val, test, rate, args.draws, needed)
                print(f"| {name} | {rate:.1%} | {needed} (pooled, resampled only) | | | "
                      f"| {res['expected']:.2%} / {res['realised']:.2%} ± {res['se']:.2%} / {res['old_rule']:.2%} |",
                      flush=True)


if __name__ == "__main__":
    main()
