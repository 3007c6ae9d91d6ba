"""Does the inspection descriptor tell defect kinds apart? A cheap check on known data, made
before any stream (``alerts_stream.py``) and used to choose the descriptor's features.

    .venv/bin/python benchmarks/descriptor_check.py [--run demo_out/runs/ganomaly-ssim-ssim]
        [--data demo_out/surfaces] [--variants 2] [--folds 5] [--margin 1.5] [--k 5]
        [--threads 1] [--out runs/descriptor_check/results.json]

Every image of the set is judged through the line's path (8-bit PNG -> ``Inspector.predict_files``
-> descriptor) as it is and in --variants jittered copies (``alerts_stream``'s jitter: the gain
and contrast spread of the set's own normals, noise sd 0.004). Images: test/<kind> for each
defect kind; normals are train/good minus the run's calibration hold-out, plus test/good.

Leave one kind out: each defect kind in turn plays the new kind; the known kinds are the others,
fitted (``KnownKinds.fit``) on the clean copies of all but one fold (--folds, by image) and
judged on the held-out fold with all its copies. Per left-out kind:

* new kind novel: share of its (flagged) parts that ``NewAnomalyKind`` would call novel, beyond
  --margin radii of every kind;
* groupable: share of those novel parts with at least k - 1 other novel parts of the kind within
  the grouping eps (DBSCAN core points: a group of k can form around them);
* held-out known novel: the same share for held-out parts of the known kinds (should be ~0);
* flagged normals novel: for held-out normals the model flagged (what false alerts are made of).

Two descriptors (the six legacy numbers [A, R, L, area share, regions, map max] and today's
``DESCRIPTOR_FIELDS``) under two geometries: the rule as it was (one pooled scale, the defect
kinds only) and as the service runs it (each kind its own spread, plus the reference kind of
passing normals, fitted on the training folds' passing normals).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.spatial.distance import cdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerts_stream import find_pools, measured_jitter, read_all

from aoiflow.fileio import atomic_write_text
from aoiflow.predict import Inspector
from aoiflow.service.alerts import KnownKinds, json_safe
from aoiflow.service.alerts.novelty import NORMAL_KIND
from aoiflow.service.descriptors import DESCRIPTOR_FIELDS, describe_map

GEOMETRIES = {"pooled, defect kinds only (before)": (False, False),
              "per-kind spread + normal reference (now)": (True, True)}


@dataclass
class Part:
    group: str        # a defect kind or "normal"
    image: int        # index of the image within its group
    variant: int      # 0 = as it is
    flagged: bool
    legacy: list[float]
    current: list[float]


def score_all(inspector: Inspector, images: dict[str, list[np.ndarray]], variants: int, jitter: Any,
              tmp: Path) -> list[Part]:
    """Every image as it is and in ``variants`` jittered copies, judged through PNG files."""
    rng = np.random.default_rng(0)
    parts = []
    for group, imgs in images.items():
        for v in range(variants + 1):
            paths = []
            for i, x in enumerate(imgs):
                y = x if v == 0 else jitter.apply(x, rng)
                path = tmp / f"{group}_{v}_{i:04d}.png"
                cv2.imwrite(str(path), (np.clip(y, 0, 1) * 255).round().astype(np.uint8).squeeze())
                paths.append(path)
            for i, pred in enumerate(inspector.predict_files(paths)):
                if pred.status != "ok":
                    raise SystemExit(f"{paths[i]}: {pred.reason}")
                current, _ = describe_map(pred, inspector)
                parts.append(Part(group, i, v, pred.decision == "anomalous", legacy_descriptor(pred, inspector), current))
    return parts


def legacy_descriptor(pred: Any, inspector: Inspector) -> list[float]:
    """The six numbers stored before DESCRIPTOR_FIELDS: A, R, L, share over the pixel threshold,
    regions over it (of at least 4 model pixels), map max / map scale."""
    from aoiflow.regions import RegionSettings, find_regions

    amap = pred.anomaly_map
    threshold = float(inspector.calibration.pixel_threshold or inspector.map_scale / 2)
    size = inspector.config.model.input_size
    regions = find_regions(amap, RegionSettings(threshold=threshold, min_area=4.0),
                           pixels_per_model_pixel=amap.size / size**2)
    values = [pred.a, pred.r, pred.l, float((amap > threshold).mean()), float(len(regions)),
              float(amap.max()) / inspector.map_scale]
    return [v if math.isfinite(v) else 0.0 for v in values]


def novel(known: KnownKinds, parts: list[Part], field_: str, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(novel mask, standardised descriptors) of the parts' ``field_`` descriptors."""
    z = known.standardise(np.array([getattr(p, field_) for p in parts], dtype=np.float64))
    ratios = np.array([known.ratios(zi).min() for zi in z])
    return ratios > margin, z


def fold_counts(parts: list[Part], field_: str, kinds: list[str], left: str, fold: int, per_kind: bool,
                reference: bool, args: argparse.Namespace) -> Counter[str]:
    """One fold: fit on the other folds' clean parts, count novel parts of the left-out kind (all
    of them), of the known kinds and of the flagged normals (this fold's)."""
    known_kinds = [k for k in kinds if k != left]
    held = [p for p in parts if p.image % args.folds == fold]
    train = [p for p in parts if p.variant == 0 and p.image % args.folds != fold and (
        p.group in known_kinds or (reference and p.group == NORMAL_KIND and not p.flagged))]
    known = KnownKinds.fit(np.array([getattr(p, field_) for p in train]), [p.group for p in train],
                           per_kind=per_kind, reference=(NORMAL_KIND,) if reference else ())
    counts: Counter[str] = Counter()
    new = [p for p in parts if p.group == left and p.flagged]
    is_new, z = novel(known, new, field_, args.margin)
    close = cdist(z[is_new], z[is_new]) <= known.eps
    counts.update(new=len(new), new_novel=int(is_new.sum()), new_groupable=int((close.sum(axis=1) >= args.k).sum()))
    for name, group in (("known", known_kinds), ("normals", [NORMAL_KIND])):
        sel = [p for p in held if p.group in group and p.flagged]
        counts.update({name: len(sel), f"{name}_novel": int(novel(known, sel, field_, args.margin)[0].sum()) if sel else 0})
    return counts


def leave_one_out(parts: list[Part], field_: str, per_kind: bool, reference: bool, args: argparse.Namespace,
                  kinds: list[str]) -> dict[str, dict[str, Any]]:
    """Per left-out kind: shares novel (new kind, held-out known, flagged normals), groupable, and the counts."""
    out = {}
    for left in kinds:
        c: Counter[str] = Counter()
        for fold in range(args.folds):
            c += fold_counts(parts, field_, kinds, left, fold, per_kind, reference, args)
        share = {key: c[num] / c[den] if c[den] else None for key, num, den in (
            ("new_kind_novel", "new_novel", "new"), ("groupable", "new_groupable", "new_novel"),
            ("held_out_known_novel", "known_novel", "known"), ("flagged_normals_novel", "normals_novel", "normals"))}
        out[left] = {**share, "counts": dict(c)}
    return out


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("demo_out/runs/ganomaly-ssim-ssim"))
    ap.add_argument("--data", type=Path, default=Path("demo_out/surfaces"))
    ap.add_argument("--variants", type=int, default=2, help="jittered copies of each image besides itself")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--margin", type=float, default=1.5, help="NewAnomalyKind's margin")
    ap.add_argument("--k", type=int, default=5, help="NewAnomalyKind's group size")
    ap.add_argument("--noise-sd", type=float, default=0.004)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/descriptor_check/results.json"))
    args = ap.parse_args(argv)
    if args.variants < 0 or args.folds < 2 or args.k < 2 or args.margin < 1:
        ap.error("need --variants >= 0, --folds >= 2, --k >= 2 and --margin >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started = time.perf_counter()
    inspector = Inspector.load(args.run, threads=args.threads)
    kinds = sorted({p.name for p in (args.data / "test").iterdir() if p.is_dir() and p.name != "good"})
    pools, notes = find_pools(args.data, inspector, kinds[0], "train+test")
    images = {NORMAL_KIND: read_all(pools.normal_paths), kinds[0]: read_all(pools.new_paths),
              **{k: read_all(v) for k, v in pools.known.items()}}
    jitter = measured_jitter(pools.normal_paths, images[NORMAL_KIND], args.noise_sd)
    tmp = Path(tempfile.mkdtemp(prefix="descriptor_check_"))
    try:
        parts = score_all(inspector, images, args.variants, jitter, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results: dict[str, Any] = {}
    lines = [("| descriptor | geometry | left-out kind | new kind novel | groupable | held-out known novel | "
              "flagged normals novel |"), "|---|---|---|---:|---:|---:|---:|"]
    for field_, label in (("legacy", "legacy (6)"), ("current", f"current ({len(DESCRIPTOR_FIELDS)})")):
        for geometry, (per_kind, reference) in GEOMETRIES.items():
            res = leave_one_out(parts, field_, per_kind, reference, args, kinds)
            results[f"{field_} / {geometry}"] = res
            for left, r in res.items():
                lines.append(f"| {label} | {geometry} | {left} | {pct(r['new_kind_novel'])} | {pct(r['groupable'])} | "
                             f"{pct(r['held_out_known_novel'])} | {pct(r['flagged_normals_novel'])} |")
    flagged = {g: float(np.mean([p.flagged for p in parts if p.group == g])) for g in images}
    lines += ["", f"{len(parts)} judged parts ({args.variants} jittered copies per image); flagged: "
              + ", ".join(f"{g} {100 * v:.1f} %" for g, v in flagged.items())
              + f"; margin {args.margin}, k {args.k}, {args.folds} folds; {time.perf_counter() - started:.0f} s."]
    print("\n".join(notes + lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(json_safe({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "fields": list(DESCRIPTOR_FIELDS), "flagged": flagged, "results": results, "table": lines,
        "command": " ".join([sys.executable, *sys.argv]) if argv is None else " ".join(argv)}), indent=1))


if __name__ == "__main__":
    main()
