"""Is a search's result better than the untuned preset beyond seed noise? (run by hand)

Retrains the tuned settings (TUNE/best.yaml) and the untuned base config of a finished
``aoiflow tune`` with several seeds, optionally at another budget, and tests every run on the
search's held-back test images (DATA/test less TUNE/validation_anomalies.txt). Prints test image
AUROC per seed and mean +- sd per config, and the tuned/untuned difference.

    .venv/bin/python benchmarks/tune_check.py runs/tune/magnetictile --seeds 1 2 3
    .venv/bin/python benchmarks/tune_check.py runs/tune/magnetictile --seeds 0 1 --epochs 15 --base-width 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from aoiflow.config import Config, load_config
from aoiflow.evaluate import evaluate_run, read_exclude_list
from aoiflow.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tune_dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, help="training epochs (default: the search's)")
    ap.add_argument("--base-width", type=int, help="network width (default: the search's)")
    ap.add_argument("--out", type=Path, help="folder for the runs (default TUNE/check)")
    args = ap.parse_args()

    record = json.loads((args.tune_dir / "tune.json").read_text())
    data_root = Path(record["data"])
    exclude = read_exclude_list(args.tune_dir / "validation_anomalies.txt", data_root)
    configs = {"tuned": load_config(args.tune_dir / "best.yaml"),
               "untuned": Config.model_validate(record["base_config"])}
    out = args.out or args.tune_dir / "check"
    torch.set_num_threads(2)
    results: dict[str, list[float]] = {k: [] for k in configs}
    for seed in args.seeds:
        for label, cfg in configs.items():
            train = {"seed": seed, **({"epochs": args.epochs} if args.epochs else {})}
            model = {"base_width": args.base_width} if args.base_width else {}
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train),
                                         "model": cfg.model.model_copy(update=model)})
            run = out / f"{label}-e{cfg.train.epochs}-w{cfg.model.base_width}-s{seed}"
            t0 = time.perf_counter()
            fit(data_root, run, cfg, resume=(run / "checkpoint.pt").exists(), progress=False)
            metrics, _ = evaluate_run(run, data_root, run / "eval_heldback", progress=False, exclude=exclude)
            results[label].append(metrics["image_auroc"])
            print(f"{label:8s} seed {seed}: test image AUROC {metrics['image_auroc']:.3f}  pixel "
                  f"{metrics['pixel_auroc']:.3f}  ({metrics['counts']['normal']} normal + "
                  f"{metrics['counts']['anomalous']} anomalous, {time.perf_counter() - t0:.0f} s)", flush=True)
    for label, values in results.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{label:8s} mean {statistics.mean(values):.3f}  sd {sd:.3f}  over seeds {args.seeds}")
    diffs = [t - u for t, u in zip(results["tuned"], results["untuned"])]
    print(f"tuned - untuned per seed: {', '.join(f'{d:+.3f}' for d in diffs)}")


if __name__ == "__main__":
    main()
