"""The loop, measured: GANomaly pre-labels -> a person's review -> the supervised defect-kind model.

    .venv/bin/python benchmarks/supervised.py --run tile=RUN_TILE --run led=RUN_LED
        [--steps 2000] [--image-size 128] [--shares 25,100] [--out runs/supervised_bench]

Sets (NAME=...): ``tile`` is ../shared/data/magnetictile_tile; ``led`` is a generated LED line
(``aoiflow synth`` + ``aoiflow preprocess``, cached under --cache; --prepare-only makes it and
prints the `aoiflow train` command for its run); any other name needs ``--data NAME=DIR`` (MVTec
layout with ground_truth masks). Each set needs a GANomaly run trained on its train/good
(``--run NAME=RUN``; --train-missing trains one with `aoiflow train` settings when the folder is
empty). Shared data is read where it lies, never copied: label files name its images.

Per set, the defect images of each kind are split (seeded) into a labelling pool (--pool, 60 %)
and a held-back test; the test adds the set's test/good images as negatives. The supervised model
is trained, with a fixed budget (--steps, --image-size), on label sets written as mask PNG folders
+ classes.txt and read back by ``fit_supervised`` as a user's would be:

  truth      the pool's ground-truth masks (the upper bound; labelling from scratch)
  prelabel   the pool's raw GANomaly pre-labels (``prelabel.label_images`` regions where the run
             judges the image anomalous), class = the image's defect folder (--label-from-folder)
  reviewed   the pre-labels after ``supervised.review.simulate_review`` against the truth

each at --shares of the pool (nested, at least one image per kind), plus --negatives train/good
images with empty masks. Labelling effort: edits of the review (deleted + added + redrawn regions)
against ``scratch_edits`` (one region drawn per truth region). On the held-back test: image AUROC
and accuracy, per-class pixel IoU, region F1 at IoU 0.5 (as ``aoiflow supervise test``) and the
two-stage verdict through ``Inspector`` (GANomaly, then the model); GANomaly alone beside. The
unknown route: a model trained on all kinds but one (--leave-out), and how often test images of
the left-out kind come out unknown_anomaly, wrongly defect:<known kind>, or ok.

Resumable: a training whose SUP/ holds a finished run is skipped, an interrupted one resumed.
Writes OUT/<set>/{labels,sup,prelabels}/ and OUT/results.json; prints markdown tables, timings and
where pre-labels hurt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from aoiflow import data
from aoiflow.fileio import atomic_write_bytes, atomic_write_text, output_stems
from aoiflow.labelformats import region_mask
from aoiflow.predict import Inspector
from aoiflow.prelabel import default_region_settings, folder_label, label_images
from aoiflow.runs import CHECKPOINT as RUN_CHECKPOINT
from aoiflow.runs import TrainedModel, _safe_load
from aoiflow.supervised.config import build_supervised_config
from aoiflow.supervised.dataset import load_supervised_data, read_label_set
from aoiflow.supervised.evaluate import ImageOutcome, summarise
from aoiflow.supervised.metrics import (
    GOOD,
    image_auroc,
    image_kind,
    pixel_confusion,
    precision_recall,
    region_counts,
)
from aoiflow.supervised.model import CHECKPOINT, MODEL, SupervisedError, SupervisedModel
from aoiflow.supervised.review import ReviewEdits, scratch_edits, simulate_review
from aoiflow.supervised.train import fit_supervised
from aoiflow.supervised.verdict import class_regions, filtered_class_map

REPO = Path(__file__).resolve().parents[1]
SHARED_TILE = REPO.parent / "shared" / "data" / "magnetictile_tile"
VARIANTS = ("truth", "prelabel", "reviewed")
VARIANT_NAMES = {"truth": "(1) ground truth", "prelabel": "(2) raw pre-labels", "reviewed": "(3) reviewed pre-labels"}
HURT = 0.02        # a drop of a score (0-1) beyond this is reported as pre-labels hurting
HURT_CLASS = 0.05  # the same for one kind's pixel IoU (fewer pixels, noisier)


# --- the set: images, masks, split --------------------------------------------------------------

@dataclass
class Item:
    """One image of the set: its kind ('good' or a defect kind), truth mask file, label-file stem."""

    path: Path
    kind: str
    mask: Path | None
    stem: str


@dataclass
class SetSplit:
    root: Path
    kinds: list[str]                        # defect kinds, sorted; class k = kinds[k - 1]
    pool: dict[str, list[Item]]             # per kind, in the seeded order shares take them
    test: dict[str, list[Item]]             # held-back defect images per kind
    test_good: list[Item]
    negatives: list[Item]                   # train/good images added to every label set (empty masks)
    dropped: list[str] = field(default_factory=list)

    def pool_at(self, share: int) -> list[Item]:
        """The first ``share`` % of each kind's pool (at least one image of each kind)."""
        return [it for k in self.kinds for it in self.pool[k][:max(1, math.ceil(share / 100 * len(self.pool[k])))]]

    def test_items(self) -> list[Item]:
        return [it for k in self.kinds for it in self.test[k]] + self.test_good


def label_stems(root: Path) -> dict[Path, str]:
    """The flat names by which the mask-folder reader finds images under ``root`` (as its
    ``_Context.by_stem``: every image under the root, ``test/crack/x.jpg`` -> ``test__crack__x``)."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES)
    return output_stems(paths, root)


def split_set(root: Path, pool: float, seed: int, max_per_kind: int | None, max_good: int | None,
              negatives: int | None) -> SetSplit:
    stems = label_stems(root)
    defects: dict[str, list[Item]] = {}
    good: list[Item] = []
    dropped = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orphan masks: not ours to report
        samples = data.test_samples(root)
    for s in samples:
        if s.label == 0:
            good.append(Item(s.path, GOOD, None, stems[s.path]))
        elif s.mask_path is None:
            dropped.append(f"{s.path}: no ground-truth mask; left out")
        else:
            defects.setdefault(s.defect_type, []).append(Item(s.path, s.defect_type, s.mask_path, stems[s.path]))
    kinds = sorted(defects)
    if not kinds:
        raise SystemExit(f"{root}: no defect images with ground_truth masks")
    pools, tests = {}, {}
    for k, kind in enumerate(kinds):
        items = sorted(defects[kind], key=lambda it: str(it.path))
        order = np.random.default_rng([seed, k]).permutation(len(items))
        if max_per_kind:
            order = order[:max_per_kind]
        n_pool = min(max(1, round(pool * len(order))), max(1, len(order) - 1))
        pools[kind] = [items[i] for i in order[:n_pool]]
        tests[kind] = [items[i] for i in order[n_pool:]]
    good = sorted(good, key=lambda it: str(it.path))
    if max_good is not None and len(good) > max_good:
        good = [good[i] for i in sorted(np.random.default_rng([seed, 1000]).permutation(len(good))[:max_good])]
    train_good = data.train_images(root)
    n_neg = sum(map(len, pools.values())) if negatives is None else negatives
    picked = sorted(np.random.default_rng([seed, 2000]).permutation(len(train_good))[:n_neg])
    negs = [Item(train_good[i], GOOD, None, stems[train_good[i]]) for i in picked]
    return SetSplit(root, kinds, pools, tests, good, negs, dropped)


def image_hw(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def truth_mask(item: Item, kinds: list[str]) -> np.ndarray:
    """uint8 (H, W) at the image size: 0 background, k = kinds[k - 1] inside the truth mask."""
    hw = image_hw(item.path)
    if item.mask is None:
        return np.zeros(hw, np.uint8)
    m = data.read_mask(item.mask)
    if m.shape != hw:
        m = cv2.resize(m.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
    return (m * (kinds.index(item.kind) + 1)).astype(np.uint8)


def write_label_set(folder: Path, class_names: list[str], all_kinds: list[str],
                    masks: list[tuple[str, np.ndarray]]) -> Path:
    """Mask PNGs (``<stem>.png``, class indices into ``class_names``) and classes.txt, written
    last as the sign the folder is complete. ``masks`` hold indices into ``all_kinds``."""
    if (folder / "classes.txt").is_file():
        return folder
    lut = np.zeros(256, np.uint8)
    for k, name in enumerate(all_kinds, 1):
        lut[k] = class_names.index(name) + 1 if name in class_names else 0
    folder.mkdir(parents=True, exist_ok=True)
    for stem, mask in masks:
        _, png = cv2.imencode(".png", lut[mask])
        atomic_write_bytes(folder / f"{stem}.png", png.tobytes())
    atomic_write_text(folder / "classes.txt", "".join(f"{n}\n" for n in class_names))
    return folder


# --- pre-labels and the simulated review ---------------------------------------------------------

@dataclass
class PoolLabels:
    truth: dict[str, np.ndarray]           # stem -> class mask (indices into all kinds)
    pre: dict[str, np.ndarray]             # stem -> pre-label class mask (class = the image's folder)
    reviewed: dict[str, np.ndarray]
    edits: dict[str, ReviewEdits]
    scratch: dict[str, int]
    decision: dict[str, str]
    seconds: float


def pool_labels(split: SetSplit, inspector: Inspector, cache: Path, progress: bool) -> PoolLabels:
    """Ground truth, GANomaly pre-labels (cached as 0/255 mask PNGs in ``cache``, as `aoiflow
    prelabel --format mask` writes them) and their simulated review, for every pool image."""
    items = split.pool_at(100)
    t0 = time.perf_counter()
    marker = cache / "prelabels.json"
    info = json.loads(marker.read_text()) if marker.is_file() else None
    settings = default_region_settings(inspector)
    made_with = {"run_version": inspector.version, "threshold": inspector.threshold,
                 "pixel_threshold": settings.threshold}
    if info is None or any(info.get(k) != v for k, v in made_with.items()):
        by_path = {it.path: it for it in items}
        decisions = {}
        for li in tqdm(label_images(inspector, [it.path for it in items], settings, label_of=folder_label),
                       total=len(items), desc="pre-labels", unit="img", disable=not progress, leave=False):
            if not hasattr(li, "regions"):  # an unreadable image: label_images yields its failed Prediction
                raise SystemExit(f"{li.path}: cannot be scored ({li.reason})")
            it = by_path[li.path]
            _, png = cv2.imencode(".png", region_mask(li))
            atomic_write_bytes(cache / "mask" / f"{it.stem}.png", png.tobytes())
            decisions[it.stem] = li.prediction.decision
        info = {**made_with, "decisions": decisions}
        atomic_write_text(marker, json.dumps(info, indent=1))
    out = PoolLabels({}, {}, {}, {}, {}, dict(info["decisions"]), 0.0)
    for it in items:
        truth = truth_mask(it, split.kinds)
        pre = (cv2.imread(str(cache / "mask" / f"{it.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127)
        pre = (pre * (split.kinds.index(it.kind) + 1)).astype(np.uint8)
        reviewed, edits = simulate_review(pre, truth)
        out.truth[it.stem], out.pre[it.stem], out.reviewed[it.stem] = truth, pre, reviewed
        out.edits[it.stem], out.scratch[it.stem] = edits, scratch_edits(truth)
    out.seconds = time.perf_counter() - t0
    return out


def effort(split: SetSplit, labels: PoolLabels, share: int) -> dict:
    """Labelling effort of the pool at ``share`` %: review edits against drawing from scratch,
    and how good the raw pre-labels are (per kind: images with no region, pixel IoU)."""
    items = split.pool_at(share)
    total = sum((labels.edits[it.stem] for it in items), ReviewEdits())
    scratch = sum(labels.scratch[it.stem] for it in items)
    per_kind = {}
    for kind in split.kinds:
        mine = [it for it in items if it.kind == kind]
        inter = sum(int(((labels.pre[it.stem] > 0) & (labels.truth[it.stem] > 0)).sum()) for it in mine)
        union = sum(int(((labels.pre[it.stem] > 0) | (labels.truth[it.stem] > 0)).sum()) for it in mine)
        e = sum((labels.edits[it.stem] for it in mine), ReviewEdits())
        per_kind[kind] = {"images": len(mine), "no_region": sum(not labels.pre[it.stem].any() for it in mine),
                          "judged_normal": sum(labels.decision.get(it.stem) == "normal" for it in mine),
                          "prelabel_pixel_iou": inter / union if union else None,
                          "scratch_edits": sum(labels.scratch[it.stem] for it in mine),
                          "review_edits": e.total, "accepted": e.accepted}
    return {"share": share, "images": len(items), "negatives": len(split.negatives), "scratch_edits": scratch,
            "review": {"deleted": total.deleted, "added": total.added, "fixed": total.fixed,
                       "accepted": total.accepted, "total": total.total},
            "prelabel_edits": 0, "review_vs_scratch": total.total / scratch if scratch else None,
            "no_region": sum(not labels.pre[it.stem].any() for it in items), "per_kind": per_kind}


# --- training and judging ------------------------------------------------------------------------

def finished(sup: Path, steps: int) -> bool:
    if not (sup / MODEL).is_file() or not (sup / CHECKPOINT).is_file():
        return False
    return int(_safe_load(sup / CHECKPOINT).get("step", 0)) >= steps


def train_seconds(sup: Path) -> float | None:
    import csv

    try:
        with open(sup / "history.csv", newline="") as f:
            return sum(float(r["seconds"] or 0) for r in csv.DictReader(f))
    except (OSError, KeyError, ValueError):
        return None


def train(labels: Path, sup: Path, root: Path, config, progress: bool) -> dict:
    """``fit_supervised`` on the label folder; skipped when SUP/ holds a finished run, resumed
    when it holds an interrupted one."""
    steps = config.train.steps
    if finished(sup, steps):
        return {"status": "reused", "train_s": train_seconds(sup)}
    t0 = time.perf_counter()
    try:
        run = fit_supervised(labels, sup, config, images=root, format="mask",
                             resume=(sup / CHECKPOINT).is_file(), progress=progress)
    except SupervisedError as exc:
        return {"status": "not trainable", "reason": str(exc), "train_s": None}
    return {"status": "trained", "train_s": time.perf_counter() - t0, "n_train": run.n_train, "n_val": run.n_val,
            "best_step": run.best_step, "best_val_miou": run.best_miou}


class TestSet:
    """The held-back test as a label folder (truth masks, empty ones for good images), read once;
    its images at each model's size loaded once per (channels, size, classes)."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.root = root
        self.label_set = read_label_set(folder, root, format="mask", need_defects=False)
        self._loaded: dict[tuple, object] = {}

    def at(self, model: SupervisedModel):
        key = (model.channels, model.image_size, tuple(model.class_names))
        if key not in self._loaded:
            self._loaded[key] = load_supervised_data(self.label_set, model.channels, model.image_size, False,
                                                     model.class_names)
        return self._loaded[key]


def judge_supervised(model: SupervisedModel, test: TestSet) -> dict:
    """The supervised model alone, as ``aoiflow supervise test`` judges it (``summarise``)."""
    ds = test.at(model)
    names = ds.class_names
    n = len(names) + 1
    ic = model.config.infer
    confusion, regions = np.zeros((n, n), np.int64), np.zeros((n, 3), np.int64)
    outcomes = []
    for start in range(0, len(ds), 32):
        index = list(range(start, min(start + 32, len(ds))))
        x, y = ds.batch(index)
        probs = model.infer(x).numpy()
        for j, i in enumerate(index):
            labels, found = class_regions(probs[j], ic.min_region_area, ic.min_confidence)
            pred, truth = filtered_class_map(labels, found), y[j].numpy()
            confusion += pixel_confusion(pred, truth, n)
            regions += region_counts(pred, truth, n)
            outcomes.append(ImageOutcome(ds.paths[i], image_kind(truth, names), image_kind(pred, names),
                                         float((1.0 - probs[j][0]).max()), []))
    return summarise(confusion, regions, outcomes, names)


def two_stage(inspector: Inspector, model: SupervisedModel, items: list[Item], known: list[str]) -> dict:
    """Verdicts through ``Inspector`` (the line's path) with this supervised model: accuracy
    (ok for good, defect:<its kind> for a known kind), detection accuracy (anything but ok counts
    as flagged) and, per true kind, how the verdicts fall."""
    line = Inspector(inspector.backend, inspector.threshold, supervised=model)
    by_path = {it.path: it for it in items}
    rows, per_kind = [], {}
    for pred in line.predict_files([it.path for it in items]):
        it = by_path[pred.path]
        rows.append({"path": str(it.path), "kind": it.kind, "decision": pred.decision, "verdict": pred.verdict})
        c = per_kind.setdefault(it.kind, {"n": 0, "right_kind": 0, "wrong_kind": 0, "unknown_anomaly": 0, "ok": 0})
        c["n"] += 1
        if pred.verdict == "ok":
            c["ok"] += 1
        elif pred.verdict == "unknown_anomaly":
            c["unknown_anomaly"] += 1
        elif pred.verdict == f"defect:{it.kind}":
            c["right_kind"] += 1
        else:
            c["wrong_kind"] += 1
    scored = [r for r in rows if r["kind"] == GOOD or r["kind"] in known]
    right = [r["verdict"] == "ok" if r["kind"] == GOOD else r["verdict"] == f"defect:{r['kind']}" for r in scored]
    flagged = [(r["verdict"] != "ok") == (r["kind"] != GOOD) for r in scored]
    return {"accuracy": float(np.mean(right)) if right else None,
            "detection_accuracy": float(np.mean(flagged)) if flagged else None,
            "per_kind": per_kind, "per_image": rows}


def judge_ganomaly(inspector: Inspector, split: SetSplit, progress: bool) -> dict:
    """GANomaly alone on the test: image AUROC of A, accuracy of its decision, and its regions
    (pre-label regions of anomalous images) against the truth with the kinds ignored, at image size."""
    settings = default_region_settings(inspector)
    items = split.test_items()
    by_path = {it.path: it for it in items}
    labels, scores, right = [], [], []
    confusion, regions = np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64)
    t0 = time.perf_counter()
    for li in tqdm(label_images(inspector, [it.path for it in items], settings), total=len(items),
                   desc="GANomaly on the test", unit="img", disable=not progress, leave=False):
        if not hasattr(li, "regions"):
            raise SystemExit(f"{li.path}: cannot be scored ({li.reason})")
        it = by_path[li.path]
        truth = (truth_mask(it, split.kinds) > 0).astype(np.uint8)
        pred = (region_mask(li) > 0).astype(np.uint8)
        confusion += pixel_confusion(pred, truth, 2)
        regions += region_counts(pred, truth, 2)
        labels.append(int(it.kind != GOOD))
        scores.append(li.prediction.a)
        right.append((li.prediction.decision == "anomalous") == (it.kind != GOOD))
    tp = confusion[1, 1]
    union = confusion[1].sum() + confusion[:, 1].sum() - tp
    return {"image_auroc": image_auroc(labels, scores), "image_accuracy": float(np.mean(right)),
            "pixel_iou_any_defect": float(tp / union) if union else None,
            "region": precision_recall(regions[1]), "seconds": time.perf_counter() - t0,
            "n_test": len(items), "n_defect": int(sum(labels))}


# --- one set -------------------------------------------------------------------------------------

def load_inspector(run: Path, args: argparse.Namespace) -> Inspector:
    """The run's Inspector; --threshold (on A) and --pixel-threshold replace its calibrated ones
    for everything here (pre-labels, GANomaly alone, the two-stage rule), as `aoiflow predict
    --threshold` and `aoiflow prelabel --pixel-threshold` would."""
    import dataclasses

    inspector = Inspector.load(run, args.threshold, threads=args.threads)
    if args.pixel_threshold is not None:
        calibration = dataclasses.replace(inspector.calibration, pixel_threshold=args.pixel_threshold)
        inspector.backend.calibration = inspector.calibration = calibration
    return inspector


def _settings_guard(work: Path, settings: dict) -> None:
    """Refuse a work folder holding results made with other settings (the split or budget)."""
    path = work / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise SystemExit(f"{work} holds results made with other settings "
                             f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                             f"pass another --out or remove {work}")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1))


def leave_out_kinds(name: str, kinds: list[str], args: argparse.Namespace) -> list[str]:
    """The kinds left out in turn for the unknown route: --leave-out values for this set
    (``SET=KIND``, or a bare KIND the set has; ``none`` for none), else its first kind."""
    if len(kinds) < 2:
        return []
    if args.all_leave_outs:
        return list(kinds)
    mine = []
    for value in args.leave_out or []:
        target, _, kind = value.rpartition("=")
        if target and target != name:
            continue
        if kind == "none":
            return []
        if kind in kinds:
            mine.append(kind)
        elif target:
            raise SystemExit(f"--leave-out {value}: {name} has no kind {kind!r} (kinds: {', '.join(kinds)})")
    return list(dict.fromkeys(mine)) or kinds[:1]


def run_set(name: str, root: Path, run: Path, args: argparse.Namespace) -> dict:
    progress = not args.quiet
    work = args.out / name
    t_set = time.perf_counter()
    inspector = load_inspector(run, args)
    model_root = TrainedModel.load(run).data_root
    if model_root and Path(model_root).resolve() != root.resolve():
        tqdm.write(f"note: {run} was trained on {model_root}, not on {root}")
    split = split_set(root, args.pool, args.seed, args.max_per_kind, args.max_good, args.negatives)
    _settings_guard(work, {"data": str(root.resolve()), "run_version": inspector.version, "seed": args.seed,
                           "pool": args.pool, "max_per_kind": args.max_per_kind, "max_good": args.max_good,
                           "negatives": len(split.negatives), "steps": args.steps, "image_size": args.image_size,
                           "width": args.width, "batch_size": args.batch_size, "threshold": inspector.threshold,
                           "pixel_threshold": inspector.calibration.pixel_threshold})
    for line in split.dropped[:5]:
        tqdm.write(f"{name}: {line}")
    counts = {k: {"pool": len(split.pool[k]), "test": len(split.test[k])} for k in split.kinds}
    listed = ", ".join(f"{k} ({c['pool']} pool / {c['test']} test)" for k, c in counts.items())
    tqdm.write(f"{name}: {root}: kinds {listed}; {len(split.test_good)} good test images; "
               f"{len(split.negatives)} train/good negatives in every label set")

    labels = pool_labels(split, inspector, work / "prelabels", progress)
    tqdm.write(f"{name}: pre-labels and simulated review of {len(labels.truth)} pool images: {labels.seconds:.1f} s")
    efforts = {s: effort(split, labels, s) for s in args.shares}

    negatives = [(it.stem, np.zeros(image_hw(it.path), np.uint8)) for it in split.negatives]
    test_folder = write_label_set(work / "labels" / "test", split.kinds, split.kinds,
                                  [(it.stem, truth_mask(it, split.kinds)) for it in split.test_items()])
    test = TestSet(test_folder, root)
    ganomaly = judge_ganomaly(inspector, split, progress)
    tqdm.write(f"{name}: GANomaly alone on {ganomaly['n_test']} test images: {ganomaly['seconds']:.1f} s")

    config = build_supervised_config(overrides={
        "model": {"image_size": args.image_size, "width": args.width},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
                  "eval_every": args.eval_every or max(1, min(100, args.steps // 4))}})
    source = {"truth": labels.truth, "prelabel": labels.pre, "reviewed": labels.reviewed}
    plan = [(v, s, None) for s in args.shares for v in VARIANTS]
    plan += [(args.leave_out_labels, 100, k) for k in leave_out_kinds(name, split.kinds, args)]
    todo = sum(not finished(work / "sup" / (f"{v}-{s}" + (f"-without-{k}" if k else "")), args.steps)
               for v, s, k in plan)
    tqdm.write(f"{name}: {len(plan)} supervised models of {args.steps} steps at {args.image_size} px ({todo} to train, "
               f"the rest finished earlier)")
    models = {}
    bar = tqdm(plan, desc=f"{name}: trainings", unit="model", disable=not progress)
    for variant, share, left_out in bar:
        key = f"{variant}-{share}" + (f"-without-{left_out}" if left_out else "")
        bar.set_postfix_str(key)
        classes = [k for k in split.kinds if k != left_out]
        items = [it for it in split.pool_at(share) if it.kind != left_out]
        folder = write_label_set(work / "labels" / key, classes, split.kinds,
                                 [(it.stem, source[variant][it.stem]) for it in items] + negatives)
        sup = work / "sup" / key
        entry = {"variant": variant, "share": share, "leave_out": left_out, "labels": str(folder), "sup": str(sup),
                 "pool_images": len(items), **train(folder, sup, root, config, progress)}
        if entry["status"] in ("trained", "reused"):
            t0 = time.perf_counter()
            model = SupervisedModel.load(sup)
            entry["metrics"] = judge_supervised(model, test)
            entry["two_stage"] = two_stage(inspector, model, split.test_items(), classes)
            entry["eval_s"] = time.perf_counter() - t0
            ts = entry["two_stage"]
            tqdm.write(f"{name}: {key}: {entry['status']} ({fmt_s(entry['train_s'])} training, {entry['eval_s']:.1f} s "
                       f"judging); mIoU {fmt(entry['metrics']['pixel']['mean_iou'])}, two-stage accuracy "
                       f"{fmt(ts['accuracy'])}")
        else:
            tqdm.write(f"{name}: {key}: {entry['status']}: {entry.get('reason', '')}")
        models[key] = entry
    bar.close()
    return {"data": str(root), "run": str(run), "run_version": inspector.version, "kinds": split.kinds,
            "counts": counts, "test_good": len(split.test_good), "negatives": len(split.negatives),
            "pixel_threshold": inspector.calibration.pixel_threshold, "ganomaly": ganomaly,
            "effort": {str(s): e for s, e in efforts.items()}, "prelabel_s": labels.seconds, "models": models,
            "seconds": time.perf_counter() - t_set}


# --- data and runs -------------------------------------------------------------------------------

def prepare_led(args: argparse.Namespace) -> Path:
    """The generated LED line: frames (`aoiflow synth`) preprocessed to surface maps (`aoiflow
    preprocess`), MVTec layout with masks, cached under --cache."""
    from aoiflow.config import PreprocessConfig
    from aoiflow.ledsynth import make_led_dataset, parse_variability
    from aoiflow.preprocess import preprocess_folder

    v = parse_variability(args.led_variability)
    base = args.cache / f"led-scale{args.led_scale:g}-var{v:g}-seed{args.led_seed}"
    frames, surfaces = base / "frames", base / "surfaces"
    if (surfaces / "preprocess.yaml").is_file():
        return surfaces
    t0 = time.perf_counter()
    if not (frames / ".complete").is_file():
        make_led_dataset(frames, scale=args.led_scale, seed=args.led_seed, progress=not args.quiet, variability=v)
        (frames / ".complete").write_text("")
    counts = preprocess_folder(frames, surfaces, PreprocessConfig(), progress=not args.quiet)
    tqdm.write(f"led: generated and preprocessed -> {surfaces} ({counts}, {time.perf_counter() - t0:.0f} s)")
    return surfaces


def train_command(root: Path, run: Path, args: argparse.Namespace) -> str:
    """The `aoiflow train` command of a set's run with the --gan-* settings."""
    return (f"aoiflow train {root} --out {run} --epochs {args.gan_epochs} --base-width {args.gan_base_width}"
            + (f" --image-size {args.gan_image_size}" if args.gan_image_size else "")
            + (f" --preset {args.gan_preset}" if args.gan_preset else ""))


def ensure_run(root: Path, run: Path, args: argparse.Namespace) -> None:
    if (run / RUN_CHECKPOINT).is_file():
        return
    command = train_command(root, run, args)
    if not args.train_missing:
        raise SystemExit(f"{run}: no trained GANomaly run; train it with `{command}` (or pass --train-missing)")
    from aoiflow.config import build_config
    from aoiflow.train import fit

    model = {"base_width": args.gan_base_width}
    if args.gan_image_size:
        model["image_size"] = args.gan_image_size
    cfg = build_config(args.gan_preset, overrides={"model": model, "train": {"epochs": args.gan_epochs,
                                                                                "threads": args.threads}})
    tqdm.write(f"training the missing run: {command}")
    fit(root, run, cfg, progress=not args.quiet)


def pairs(values: list[str] | None, flag: str) -> dict[str, Path]:
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} {v!r}: expected NAME=PATH (e.g. tile=runs/tile)")
        out[name] = Path(path)
    return out


# --- printing ------------------------------------------------------------------------------------

def fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_s(v) -> str:
    return "–" if v is None else f"{v:.0f} s"


def per_class(metrics: dict, kinds: list[str]) -> str:
    pc = metrics["pixel"]["per_class"]
    return ", ".join(f"{k} {fmt(pc.get(k, {}).get('iou'), 2)}" for k in kinds)


def print_tables(results: dict, args: argparse.Namespace) -> list[str]:
    notes = []
    print(f"\nbudget: {args.steps} steps, batch {args.batch_size}, {args.image_size} px, width {args.width}, "
          f"seed {args.seed}, pool {args.pool:.0%} of each kind's defect images, threads {args.threads}")
    print("\n| set | labels | share | pool images | edits (scratch) | image AUROC | image acc | two-stage acc | "
          "two-stage detect | mIoU | per-class IoU | region F1@0.5 | train |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        g = r["ganomaly"]
        print(f"| {name} | GANomaly alone | – | – | – | {fmt(g['image_auroc'])} | {fmt(g['image_accuracy'])} | – | "
              f"– | {fmt(g['pixel_iou_any_defect'])} (any kind) | – | "
              f"{fmt(g['region']['f1'])} (any kind) | – |")
        for m in r["models"].values():
            if m["leave_out"]:
                continue
            e = r["effort"][str(m["share"])]
            edits = {"truth": e["scratch_edits"], "prelabel": 0, "reviewed": e["review"]["total"]}[m["variant"]]
            if "metrics" not in m:
                print(f"| {name} | {VARIANT_NAMES[m['variant']]} | {m['share']} % | {m['pool_images']} | {edits} "
                      f"({e['scratch_edits']}) | {m['status']} |" + " |" * 8)
                continue
            mm, ts = m["metrics"], m["two_stage"]
            print(f"| {name} | {VARIANT_NAMES[m['variant']]} | {m['share']} % | {m['pool_images']} | {edits} "
                  f"({e['scratch_edits']}) | {fmt(mm['image']['auroc'])} | {fmt(mm['image']['accuracy'])} | "
                  f"{fmt(ts['accuracy'])} | {fmt(ts['detection_accuracy'])} | {fmt(mm['pixel']['mean_iou'])} | "
                  f"{per_class(mm, r['kinds'])} | {fmt(mm['regions_iou_0.5']['all']['f1'])} | {fmt_s(m['train_s'])} |")

    print("\nLabelling effort of the pool (regions; a person's edits: deleted + added + redrawn):")
    print("| set | share | defect images | from scratch: regions drawn | raw pre-labels: edits | review: deleted / "
          "added / redrawn / confirmed | review edits | vs scratch | images without a pre-label region |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for s, e in r["effort"].items():
            v = e["review"]
            print(f"| {name} | {s} % | {e['images']} | {e['scratch_edits']} | 0 (taken as they are) | {v['deleted']} / "
                  f"{v['added']} / {v['fixed']} / {v['accepted']} | {v['total']} | "
                  f"{fmt(e['review_vs_scratch'] and 100 * e['review_vs_scratch'], 0)} % | {e['no_region']} |")

    rows = [(name, m) for name, r in results.items() for m in r["models"].values() if m["leave_out"]]
    if rows:
        print("\nUnknown route: trained on all kinds but one; verdicts on the held-back test images of the left-out kind:")
        print("| set | left out | labels | images | unknown_anomaly | defect:<known kind> (wrong) | ok (missed) | "
              "two-stage acc on known kinds | all-kinds model: right kind |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, m in rows:
            if "two_stage" not in m:
                print(f"| {name} | {m['leave_out']} | {m['variant']} | {m['status']} |" + " |" * 5)
                continue
            c = m["two_stage"]["per_kind"].get(m["leave_out"], {"n": 0})
            n = max(c["n"], 1)
            ref = results[name]["models"].get(f"{m['variant']}-100", {}).get("two_stage", {}).get("per_kind", {})
            ref_c = ref.get(m["leave_out"])
            ref_txt = f"{ref_c['right_kind'] / max(ref_c['n'], 1):.0%}" if ref_c else "–"
            print(f"| {name} | {m['leave_out']} | {m['variant']} | {c['n']} | {c.get('unknown_anomaly', 0) / n:.0%} | "
                  f"{c.get('wrong_kind', 0) / n:.0%} | {c.get('ok', 0) / n:.0%} | {fmt(m['two_stage']['accuracy'])} | "
                  f"{ref_txt} |")
            if c["n"] and c.get("wrong_kind", 0) / n > 0.5:
                notes.append(f"{name}: the unknown kind {m['leave_out']} is mostly named as a known kind "
                             f"({c['wrong_kind']} of {c['n']}): the model claims what it was never shown")

    for name, r in results.items():
        notes += hurt_notes(name, r)
    print("\nWhere pre-labels hurt (against the ground-truth labels at the same share):")
    for n in notes or ["nowhere beyond the noise margins (scores within 0.02, per-kind IoU within 0.05)"]:
        print(f"- {n}")
    return notes


def plot_shares(results: dict, out_png: Path) -> Path | None:
    """One row per set: image AUROC, mIoU, region F1 and the two-stage verdict's accuracy against
    the share of the pool labelled, a line per label set, GANomaly alone as a dashed line. None
    when no set has two shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = {n: r for n, r in results.items() if len({m["share"] for m in r["models"].values()}) > 1}
    if not sets:
        return None
    # GANomaly alone names no kind: its line is its any-defect figure, and absent for the verdicts
    panels = (("image AUROC", lambda m: m["metrics"]["image"]["auroc"], lambda g: g["image_auroc"]),
              ("mIoU (defect kinds)", lambda m: m["metrics"]["pixel"]["mean_iou"], lambda g: g["pixel_iou_any_defect"]),
              ("region F1 @ IoU 0.5", lambda m: m["metrics"]["regions_iou_0.5"]["all"]["f1"],
               lambda g: g["region"]["f1"]),
              ("two-stage verdict accuracy", lambda m: m["two_stage"]["accuracy"], None))
    fig, axes = plt.subplots(len(sets), len(panels), figsize=(16, 3.4 * len(sets)), squeeze=False)
    for row, (name, r) in zip(axes, sets.items()):
        for ax, (title, get, get_ganomaly) in zip(row, panels):
            for variant in VARIANTS:
                pts = sorted((m["share"], get(m)) for m in r["models"].values()
                             if m["variant"] == variant and not m["leave_out"] and "metrics" in m)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=VARIANT_NAMES[variant])
            g = get_ganomaly(r["ganomaly"]) if get_ganomaly else None
            if g is not None:
                ax.axhline(g, color="grey", ls="--", label="GANomaly alone")
            ax.set(title=f"{name}: {title}", xlabel="share of the pool labelled (%)", xscale="log", ylim=(0, 1))
            ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def hurt_notes(name: str, r: dict) -> list[str]:
    notes = []
    for s, e in r["effort"].items():
        bad = [f"{k} ({c['no_region']} of {c['images']} without a region, {c['judged_normal']} of them judged "
               f"normal; pre-label pixel IoU {fmt(c['prelabel_pixel_iou'], 2)})"
               for k, c in e["per_kind"].items() if c["no_region"]]
        if bad and s == str(max(map(int, r["effort"]))):
            notes.append(f"{name}: raw pre-labels teach defect images as defect-free where GANomaly found no region: "
                         + "; ".join(bad))
        if e["review_vs_scratch"] is not None and e["review_vs_scratch"] > 1:
            notes.append(f"{name} {s} %: reviewing the pre-labels takes more edits than drawing from scratch "
                         f"({e['review']['total']} vs {e['scratch_edits']}: {e['review']['deleted']} spurious regions "
                         f"deleted, {e['review']['fixed']} redrawn)")
        truth = r["models"].get(f"truth-{s}", {})
        if "metrics" not in truth:
            continue
        for variant in ("prelabel", "reviewed"):
            m = r["models"].get(f"{variant}-{s}", {})
            if "metrics" not in m:
                if m:
                    notes.append(f"{name} {s} %: {VARIANT_NAMES[variant]} cannot be trained at all: "
                                 f"{m.get('reason', m['status'])}")
                continue
            scores = {"mIoU": (m["metrics"]["pixel"]["mean_iou"], truth["metrics"]["pixel"]["mean_iou"]),
                      "region F1": (m["metrics"]["regions_iou_0.5"]["all"]["f1"],
                                    truth["metrics"]["regions_iou_0.5"]["all"]["f1"]),
                      "image AUROC": (m["metrics"]["image"]["auroc"], truth["metrics"]["image"]["auroc"]),
                      "two-stage accuracy": (m["two_stage"]["accuracy"], truth["two_stage"]["accuracy"])}
            drops = [f"{k} {fmt(a)} vs {fmt(b)}" for k, (a, b) in scores.items()
                     if a is not None and b is not None and b - a > HURT]
            classes = [f"{k} {fmt(a, 2)} vs {fmt(b, 2)}" for k in r["kinds"]
                       if (a := m["metrics"]["pixel"]["per_class"].get(k, {}).get("iou")) is not None
                       and (b := truth["metrics"]["pixel"]["per_class"].get(k, {}).get("iou")) is not None
                       and b - a > HURT_CLASS]
            if drops or classes:
                notes.append(f"{name} {s} %: {VARIANT_NAMES[variant]} fall short of ground truth: "
                             + "; ".join(drops + ([f"per-kind IoU {', '.join(classes)}"] if classes else [])))
    return notes


# --- main ----------------------------------------------------------------------------------------

def parse_shares(text: str) -> list[int]:
    try:
        shares = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shares {text!r}: whole percentages, e.g. 10,25,50,100") from None
    if not shares or shares[0] < 1 or shares[-1] > 100:
        raise argparse.ArgumentTypeError(f"--shares {text!r}: percentages from 1 to 100")
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", metavar="SET=RUN",
                    help="the GANomaly run of a set (repeat): tile=RUN, led=RUN, or NAME=RUN with --data NAME=DIR")
    ap.add_argument("--data", action="append", metavar="SET=DIR",
                    help=f"a set's data (MVTec layout with masks); tile defaults to {SHARED_TILE}, led to a "
                         f"generated line under --cache")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "supervised_bench", help="work folder")
    ap.add_argument("--json", type=Path, default=None, help="results JSON (default OUT/results.json)")
    ap.add_argument("--steps", type=int, default=2000, help="optimiser steps per supervised model")
    ap.add_argument("--image-size", type=int, default=128, help="supervised model input size")
    ap.add_argument("--width", type=int, default=16, help="U-Net width")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=None, help="steps between validations (default steps/4, "
                                                                 "at most 100)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=float, default=0.6, help="share of each kind's defect images to label")
    ap.add_argument("--shares", type=parse_shares, default=parse_shares("25,100"),
                    help="shares of the pool to train on, percent (the full study: 10,25,50,100)")
    ap.add_argument("--negatives", type=int, default=None, help="train/good images with empty masks in every "
                                                                 "label set (default: as many as pool defect images)")
    ap.add_argument("--max-per-kind", type=int, default=None, help="at most this many defect images per kind (smoke)")
    ap.add_argument("--max-good", type=int, default=None, help="at most this many good test images (smoke)")
    ap.add_argument("--leave-out", action="append", metavar="[SET=]KIND", default=None,
                    help="kind left out for the unknown route (default: each set's first kind; 'none' skips)")
    ap.add_argument("--all-leave-outs", action="store_true", help="leave out each kind in turn")
    ap.add_argument("--leave-out-labels", choices=VARIANTS, default="truth",
                    help="labels of the leave-out models (default truth)")
    led = ap.add_argument_group("generated LED line")
    led.add_argument("--cache", type=Path, default=REPO / "runs" / "supervised_bench" / "cache")
    led.add_argument("--led-scale", type=float, default=1.0, help="share of the reference split (1: 300 defect frames)")
    led.add_argument("--led-variability", default="0", help="none, mild, strong or 0-1")
    led.add_argument("--led-seed", type=int, default=0)
    led.add_argument("--prepare-only", action="store_true", help="generate the LED set, print how to train its "
                                                                 "run, and stop")
    gan = ap.add_argument_group("a missing GANomaly run")
    gan.add_argument("--train-missing", action="store_true", help="train a run whose folder has no checkpoint")
    gan.add_argument("--gan-preset", default=None)
    gan.add_argument("--gan-epochs", type=int, default=15)
    gan.add_argument("--gan-base-width", type=int, default=32)
    gan.add_argument("--gan-image-size", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=None, help="decision threshold on A for every run "
                                                                   "(default: each run's calibrated one)")
    ap.add_argument("--pixel-threshold", type=float, default=None, help="map threshold of the regions and the "
                                                                         "two-stage rule (default: the run's)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--plot", type=Path, nargs="+", default=None, metavar="JSON",
                    help="only draw OUT/shares.png from these results files (several sets in one figure)")
    args = ap.parse_args()
    if args.plot:  # only draw the shares figure of earlier results
        results = {}
        for path in args.plot:
            results.update(json.loads(path.read_text())["sets"])
        print(f"figure: {plot_shares(results, args.out / 'shares.png')}")
        return
    if not args.run:
        ap.error("--run SET=RUN is required (or --plot JSON)")

    torch.set_num_threads(args.threads)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    runs, datas = pairs(args.run, "--run"), pairs(args.data, "--data")
    t0 = time.perf_counter()
    roots = {}
    for name in runs:
        if name in datas:
            roots[name] = datas[name]
        elif name == "tile":
            roots[name] = SHARED_TILE
        elif name == "led":
            roots[name] = prepare_led(args)
        else:
            raise SystemExit(f"--run {name}=...: give its data with --data {name}=DIR")
        if not (roots[name] / "test").is_dir():
            raise SystemExit(f"{roots[name]}: not a data folder in MVTec layout (no test/)")
    if args.prepare_only:
        for name, root in roots.items():
            print(f"{name}: data {root}; train its run with `{train_command(root, runs[name], args)}`")
        return
    for name, root in roots.items():
        ensure_run(root, runs[name], args)

    results = {}
    for name, root in roots.items():
        results[name] = run_set(name, root, runs[name], args)
    notes = print_tables(results, args)
    total = time.perf_counter() - t0
    print("\ntimings: " + "; ".join(
        f"{n}: {r['seconds']:.0f} s (pre-labels + review {r['prelabel_s']:.0f} s, GANomaly test "
        f"{r['ganomaly']['seconds']:.0f} s, trainings "
        f"{sum(m['train_s'] or 0 for m in r['models'].values()):.0f} s, judging "
        f"{sum(m.get('eval_s', 0) for m in r['models'].values()):.0f} s)" for n, r in results.items())
        + f"; total {total:.0f} s")
    out = args.json or args.out / "results.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"settings": settings, "sets": results, "notes": notes, "seconds": total},
                                      indent=1, default=str))
    print(f"results: {out}")
    figure = plot_shares(results, out.with_suffix(".png"))
    if figure:
        print(f"figure: {figure}")


if __name__ == "__main__":
    sys.exit(main())
