"""What each head setting gives on one trained run: the same GANomaly networks, the head trained
again with one change at a time, judged first on painted defects on the run's held-out normals
(the validation a setting is chosen on) and then on the set's test images.

    .venv/bin/python benchmarks/head_ablation.py RUN DATA --out runs/head_ablation \\
        --variant base=steps:1353 --variant area50=steps:1353,max_defect_area:0.5 ...

A variant is ``name=field:value,...`` over ``HeadConfig`` fields (``fills:intensity+blur``), plus ``augment:hflip+vflip``,
``precision:bf16`` (the head's convolutions in bfloat16), ``score:ssim_multiscale`` (the residual
the head reads) and ``minutes:5`` (train the steps that
fit in 5 minutes: heads of different cost compared at the same time, as a budgeted run spends it).
Each variant trains on a copy of RUN (RUN itself is never changed); a variant already evaluated
under --out is read back, so an interrupted ablation resumes. Runs one after another: a head
trains for minutes on two CPU cores, and two at once slow each other several times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from aoiflow import data
from aoiflow.evaluate import evaluate
from aoiflow.head import synthetic_validation
from aoiflow.headrun import add_head
from aoiflow.runs import TrainedModel, load_head_validation
from aoiflow.synthdefect import FILLS

RUN_FILES = ("model.pt", "checkpoint.pt", "config.yaml", "history.csv")


def parse_variant(text: str) -> tuple[str, dict, dict]:
    """'name=steps:1353,augment:hflip+vflip,precision:bf16,minutes:5' -> (name, head settings,
    the rest as ``add_head`` arguments: augment, precision, max_minutes)."""
    name, _, body = text.partition("=")
    settings, extra = {}, {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key == "augment":
            extra["augment"] = [k for k in value.split("+") if k]
        elif key == "fills":
            settings["fills"] = [k for k in value.split("+") if k]
        elif key in ("precision", "score"):
            extra[key] = value
        elif key == "minutes":
            extra["max_minutes"] = float(value)
        else:
            settings[key] = _number(value)
    return name, settings, extra


def _number(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def run_variant(base: Path, data: Path, out: Path, settings: dict, extra: dict) -> dict:
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    t0 = time.perf_counter()
    model = add_head(out, settings, progress=False, **extra)
    head_s = time.perf_counter() - t0
    m = evaluate(out, data, progress=False)
    result = {"settings": settings, **extra, "steps": model.config.head.steps, "head_s": head_s,
              "validation": load_head_validation(out),
              "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
              "pro": m["localisation"].get("pro_30"),
              "per_kind": {k: v["image_auroc"] for k, v in m["per_defect_type"].items()}}
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def painter_free_checks(run_dir: Path, result: dict) -> dict:
    """Figures that do not depend on the variant's own painter, added to ``result`` once: the
    validation with the default painter (all fills), and how the head scores its own training
    normals against held-out normals (90th percentile of R; a head that memorised its training
    normals scores them far lower)."""
    if "reference_validation" in result:
        return result
    model = TrainedModel.load(run_dir)
    root = Path(model.data_root)
    size = model.config.model.input_size
    train = data.load_images([root / p for p in model.split["train"][:200]], model.channels, size).images
    val = data.load_images([root / p for p in model.split["val"]], model.channels, size).images
    default_painter = model.config.model_copy(update={"head": model.config.head.model_copy(
        update={"fills": list(FILLS)})})
    result["reference_validation"] = synthetic_validation(model.generator, model.head, val, default_painter)
    result["normals_r_p90"] = {"training": float(np.percentile(model.score(train).r, 90)),
                               "held_out": float(np.percentile(model.score(val).r, 90))}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a trained run (its GANomaly networks are kept)")
    ap.add_argument("data", type=Path, help="the set's root (DATA/test is scored)")
    ap.add_argument("--variant", action="append", required=True, help="name=field:value,... (see above)")
    ap.add_argument("--out", type=Path, default=Path("runs/head_ablation"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for text in args.variant:
        name, settings, extra = parse_variant(text)
        r = painter_free_checks(args.out / name, run_variant(args.run, args.data, args.out / name, settings, extra))
        rows.append((name, r))
        print(name, json.dumps(r), flush=True)
    print("\n| variant | settings | steps | head s | validation pixel / image AUROC | the same, default painter "
          "| R p90 training / held-out normals | image AUROC | pixel AUROC | PRO |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        v = r["validation"] or {}
        what = ", ".join(f"{k} {val}" for k, val in r["settings"].items())
        for key in ("augment", "precision", "max_minutes", "score"):
            if r.get(key):
                what += f", {key} {'+'.join(r[key]) if key == 'augment' else r[key]}"
        ref, p90 = r["reference_validation"], r["normals_r_p90"]
        print(f"| {name} | {what} | {r.get('steps', '')} | {r['head_s']:.0f} | {v.get('pixel_auroc', float('nan')):.3f} / "
              f"{v.get('image_auroc', float('nan')):.3f} | {ref['pixel_auroc']:.3f} / {ref['image_auroc']:.3f} "
              f"| {p90['training']:.4f} / {p90['held_out']:.4f} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['pro'] or float('nan'):.3f} |")


if __name__ == "__main__":
    main()
