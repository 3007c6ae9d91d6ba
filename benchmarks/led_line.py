"""The LED line on the full generated set: AUROC per preset and defect kind, preprocessing speed.

    .venv/bin/python benchmarks/led_line.py [--scale 1.0] [--epochs 15] [--base-width 32] [--out runs/led]

Generates the reference split (500 normal training frames, 300 normal + 300 defective test frames
at scale 1), preprocesses it, trains the three presets at their reference image sizes with the
stated budget, and prints one table; the HTML report is written to OUT/report.html. Also times
preprocessing of a 1280x1024 frame (median over 50 frames, 2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from aoiflow.config import PreprocessConfig
from aoiflow.config import PRESET_NAMES
from aoiflow.demo import run_led_demo
from aoiflow.ledsynth import parse_variability
from aoiflow.ledsynth import make_frame
from aoiflow.preprocess import preprocess_frame


def preprocessing_ms(frames: int = 50) -> float:
    rng = np.random.default_rng(0)
    cfg = PreprocessConfig()
    images = [make_frame(int(rng.integers(1, 6)), None, rng)[0] for _ in range(frames)]
    times = []
    for img in images:
        t0 = time.perf_counter()
        preprocess_frame(img, cfg)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--base-width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/led"))
    ap.add_argument("--variability", type=parse_variability, default=0.0,
                    help="normal part-to-part variation: none, mild, strong or 0-1")
    ap.add_argument("--presets", nargs="+", default=list(PRESET_NAMES))
    ap.add_argument("--map-normalise", choices=("none", "position"), default=None,
                    help="override the scoring's map normalisation (default: the config's, position)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cv_ms = preprocessing_ms()
    report = run_led_demo(args.out, scale=args.scale, epochs=args.epochs, base_width=args.base_width,
                          seed=args.seed, progress=False, variability=args.variability, presets=tuple(args.presets),
                          map_normalise=args.map_normalise)
    import json

    summary = json.loads((args.out / "summary.json").read_text())
    kinds = sorted(summary["baseline"].keys() - {"all"})
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\nbudget: {args.epochs} epochs, batch 16, lr 4e-4, base width {args.base_width}, scale {args.scale}, "
          f"variability {args.variability:g}, map normalisation {args.map_normalise or 'the default'}, 2 threads")
    print("| preset | image AUROC | " + " | ".join(kinds) + " | pixel AUROC | ms/frame b1 | train s |")
    print("|---|---|" + "---|" * len(kinds) + "---|---|---|")
    for r in summary["results"]:
        m = r["metrics"]
        print(f"| {r['preset']} | {fmt(m['image_auroc'])} | "
              + " | ".join(fmt(m["per_defect_type"].get(k, {}).get("image_auroc")) for k in kinds)
              + f" | {fmt(m['pixel_auroc'])} | {r['ms_b1']:.1f} | {r['train_s']:.0f} |")
    b = summary["baseline"]
    print(f"| baseline |x - mean normal| | {fmt(b['all'])} | " + " | ".join(fmt(b.get(k)) for k in kinds) + " | – | – | – |")
    print(f"\npreprocessing of a 1280x1024 frame: {cv_ms:.1f} ms (median of 50)")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
