"""Alerts on a generated stream: how fast do the line's alert rules see a new defect kind and a
slow lighting drift, and how often do they cry wolf on normal production?

    .venv/bin/python benchmarks/alerts_stream.py [--run demo_out/runs/ganomaly-ssim-ssim]
        [--data demo_out/surfaces] [--supervised SUP] [--new-kind plate_rift] [--normals 3000]
        [--rate 0.02] [--baseline 0.01] [--repeats 3] [--seed 0] [--threads 1]
        [--out runs/alerts_stream/results.json]

The stream is made of the set's real surface maps (MVTec layout), each frame judged by the same
path as the line: PNG file -> ``Inspector.predict_files`` (GANomaly, and the supervised model's
two-stage verdict with --supervised) -> ``descriptors.describe_map`` -> ``Observation`` ->
``AlertEngine`` with the rules ``service/alert_feed.py`` builds from ``ServiceSettings`` defaults
(p-chart of defect rates, Page-Hinkley drift of normal scores, input health and ``NewAnomalyKind``).
The new-kind rule's known kinds are fitted as the service fits them from its store
(``known_kinds.fit_known_kinds``): the known defect kinds' test images stand for labelled defects,
and the normal pool's images that pass (as they are) for the stored passing parts that give the
reference of normal.

Frames. Normal frames are drawn with replacement from the set's normal images that calibration
did not use: train/good minus the run's held-out (calibration) split, plus test/good
(``--normal-pool test`` keeps test/good only: the training images were seen by the model and
score lower). Known defects are the test images of every kind but --new-kind; the new kind is
test/<--new-kind>. Every frame gets a small photometric jitter so repeats are not identical:
gain and contrast about the image mean with the spread the set's own normal surface maps have
within a package type (measured here; preprocessing pins the brightness, so both are well under
1 %), plus Gaussian noise of sd --noise-sd (default 0.004, about one 8-bit step and a third of
the generator's raw sensor noise). Each jittered frame is scored (``--variants 0``), or, when
that would be too slow, each unique image is scored once in V jittered variants that frames draw
from (``--variants V``; ``auto`` measures ms/frame first and takes 0 unless the full run would
exceed --budget-min). The drift phase is always scored frame by frame.

Per repeat (seed + r) one normal phase of --normals frames (known defects at --baseline), then,
from a copy of the alert engine at its end:

* scenario 1 (new kind): the new kind at --rate among continuing normals and known defects, until
  a new-kind alert and a defect-rate alert have both come or --after frames;
* scenario 2 (lighting drift): from frame N the frames' gain ramps linearly from 1 to
  --drift-gain over --drift-frames frames (then holds), until the NormalDrift alert or
  --drift-tail frames after the ramp.

Reported: alerts in the normal phase (false alerts, per 10,000 normal-phase frames, and per
10,000 frames where each rule was armed); the delay from the new kind's first part to the first
new-kind alert whose evidence is mostly new-kind parts and to the first defect-rate alert, in
frames (0 = on that part) and in new-kind parts seen (inclusive); frames from the drift start to
the NormalDrift alert (0 = on the first drifted frame), the gain then, and the parts flagged
anomalous during the drift before it (against those the pre-drift flag rate predicts). Mean / min
/ max over repeats, a markdown table and JSON at --out.

The lighting drift is applied to the surface maps, after preprocessing. On the line the
preprocessing maps the part's and the background's mean brightness to fixed targets (a gamma
each), which removes most of a plain gain on the raw frame; what is simulated is the part of a
lighting change that survives it (or a line fed surface maps).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from aoiflow import data
from aoiflow.fileio import atomic_write_text
from aoiflow.predict import Inspector
from aoiflow.service.alert_feed import AlertFeed
from aoiflow.service.alerts import (
    AlertEngine,
    KnownKinds,
    Observation,
    json_safe,
)
from aoiflow.service.alerts.novelty import NORMAL_KIND
from aoiflow.service.descriptors import describe_map
from aoiflow.service.known_kinds import fit_known_kinds
from aoiflow.service.settings import ServiceSettings

T0 = datetime(2024, 1, 1, tzinfo=UTC)  # one part a second from here
CHUNK = 16                                      # frames scored per predict_files call
NORMAL, KNOWN, NEW = "normal", "known", "new"
DRIFT_GAINS = (1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.92, 0.90)
FULL = {"normals": 3000, "repeats": 3}          # the size the runtime estimate is for


# ----------------------------------------------------------------------------- images and scoring

@dataclass
class Jitter:
    gain_sd: float
    contrast_sd: float
    noise_sd: float

    def apply(self, x: np.ndarray, rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
        """Gain and contrast about the image mean, then noise; ``gain`` is the lighting drift."""
        m = float(x.mean())
        c = 1.0 + rng.normal(0.0, self.contrast_sd)
        g = (1.0 + rng.normal(0.0, self.gain_sd)) * gain
        y = (m + (x - m) * c) * g
        if self.noise_sd > 0:
            y = y + rng.normal(0.0, self.noise_sd, x.shape).astype(np.float32)
        return np.clip(y, 0.0, 1.0)


def measured_jitter(paths: list[Path], images: list[np.ndarray], noise_sd: float) -> Jitter:
    """Gain / contrast spread of the normal surface maps within a package type (the name's
    'typeN_' prefix; one group when names have none): mean over groups of sd/mean of the image
    means and of the image sds."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for p, x in zip(paths, images):
        key = p.name.split("_")[0] if p.name.startswith("type") else "all"
        groups.setdefault(key, []).append((float(x.mean()), float(x.std())))
    gains, contrasts = [], []
    for group in groups.values():
        if len(group) < 3:
            continue
        v = np.array(group)
        gains.append(v[:, 0].std(ddof=1) / v[:, 0].mean())
        contrasts.append(v[:, 1].std(ddof=1) / v[:, 1].mean())
    if not gains:
        return Jitter(0.002, 0.01, noise_sd)
    return Jitter(float(np.mean(gains)), float(np.mean(contrasts)), noise_sd)


@dataclass
class Scored:
    """What the line keeps of one judged frame (and feeds the alert rules)."""

    ok: bool
    a: float
    decision: str
    verdict: str
    kind: str | None
    descriptor: list[float] | None


class Scorer:
    """Judges in-memory surface maps through the line's path: written as 8-bit PNG, read back by
    ``Inspector.predict_files``, described by ``describe_map``."""

    def __init__(self, inspector: Inspector, tmp: Path) -> None:
        self.inspector, self.tmp = inspector, tmp
        self.frames = 0
        self.seconds = 0.0

    def score(self, images: list[np.ndarray], batch_size: int = CHUNK) -> list[Scored]:
        t0 = time.perf_counter()
        paths = []
        for i, x in enumerate(images):
            path = self.tmp / f"slot{i:03d}.png"
            u8 = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
            if u8.ndim == 3 and u8.shape[2] == 1:
                u8 = u8[..., 0]
            elif u8.ndim == 3:
                u8 = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(path), u8):
                raise OSError(f"could not write {path}")
            paths.append(path)
        out = []
        for pred in self.inspector.predict_files(paths, batch_size=batch_size):
            if pred.status != "ok":
                out.append(Scored(False, float("nan"), "normal", "ok", None, None))
                continue
            descriptor, _ = describe_map(pred, self.inspector)
            out.append(Scored(True, pred.a, pred.decision, pred.verdict, pred.kind, descriptor))
        self.frames += len(images)
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.seconds / max(1, self.frames)


def read_all(paths: list[Path]) -> list[np.ndarray]:
    return [data.read_image(p) for p in paths]


@dataclass
class Pools:
    normal_paths: list[Path]
    normal_origin: list[str]  # "train" or "test" per normal image
    known: dict[str, list[Path]]
    new_kind: str
    new_paths: list[Path]


def find_pools(root: Path, inspector: Inspector, new_kind: str, normal_pool: str) -> tuple[Pools, list[str]]:
    notes = []
    samples = data.test_samples(root)
    kinds = sorted({s.defect_type for s in samples if s.label})
    if new_kind not in kinds:
        raise SystemExit(f"--new-kind {new_kind!r}: not a defect folder of {root / 'test'} (found {kinds})")
    if len(kinds) < 2:
        raise SystemExit(f"{root / 'test'}: needs a known defect kind besides {new_kind!r}")
    test_good = [s.path for s in samples if not s.label]
    train: list[Path] = []
    if normal_pool == "train+test":
        model = getattr(inspector.backend, "model", None)
        split = getattr(model, "split", None)
        if split and split.get("val"):
            held_out = {str(Path(p)) for p in split["val"]}
            train = [p for p in data.train_images(root) if str(p.relative_to(root)) not in held_out]
            if split.get("root") and Path(split["root"]).resolve() != root.resolve():
                notes.append(f"the run was trained on {split['root']}, not on {root}; its held-out split is "
                             f"matched by file name")
            notes.append(f"normal pool: {len(train)} train/good images (not the {len(held_out)} held out for "
                         f"calibration; the model was trained on them) + {len(test_good)} test/good")
        else:
            notes.append("the run names no held-out split (an exported model?): normal pool = test/good only")
    else:
        notes.append(f"normal pool: test/good only ({len(test_good)} images)")
    known = {k: [s.path for s in samples if s.defect_type == k] for k in kinds if k != new_kind}
    pools = Pools(train + test_good, ["train"] * len(train) + ["test"] * len(test_good), known, new_kind,
                  [s.path for s in samples if s.defect_type == new_kind])
    return pools, notes


# ----------------------------------------------------------------------------- the stream

@dataclass
class Frame:
    idx: int
    role: str         # normal / known / new
    group: str        # "normal" or the defect kind
    image: int        # index into the group's images
    gain: float = 1.0


@dataclass
class Record:
    idx: int
    role: str
    group: str
    flagged: bool
    gain: float
    alerts: list[dict[str, Any]]


class Stream:
    """Draws frames, judges them (directly or from the variant bank) and feeds the engine."""

    def __init__(self, scorer: Scorer, images: dict[str, list[np.ndarray]], jitter: Jitter,
                 pools: Pools, args: argparse.Namespace, progress: bool) -> None:
        self.scorer, self.images, self.jitter, self.pools, self.args = scorer, images, jitter, pools, args
        self.progress = progress
        self.bank: dict[tuple[str, int], list[Scored]] | None = None

    def build_bank(self, variants: int, rng: np.random.Generator) -> None:
        """Every unique image scored once in ``variants`` jittered versions."""
        todo = [(g, i) for g, imgs in self.images.items() for i in range(len(imgs))]
        self.bank = {}
        bar = tqdm(total=len(todo) * variants, desc="variant bank", unit="frame", disable=not self.progress)
        for start in range(0, len(todo), CHUNK):
            part = todo[start:start + CHUNK]
            for _ in range(variants):
                scored = self.scorer.score([self.jitter.apply(self.images[g][i], rng) for g, i in part])
                for key, s in zip(part, scored):
                    self.bank.setdefault(key, []).append(s)
                bar.update(len(part))
        bar.close()

    def draw(self, idx: int, rng: np.random.Generator, new_rate: float, gain: float = 1.0) -> Frame:
        u = rng.random()
        if u < new_rate:
            return Frame(idx, NEW, self.pools.new_kind, int(rng.integers(len(self.images[self.pools.new_kind]))), gain)
        if u < new_rate + self.args.baseline:
            kinds = sorted(self.pools.known)
            kind = kinds[int(rng.integers(len(kinds)))]
            return Frame(idx, KNOWN, kind, int(rng.integers(len(self.images[kind]))), gain)
        return Frame(idx, NORMAL, NORMAL, int(rng.integers(len(self.images[NORMAL]))), gain)

    def judge(self, frames: list[Frame], rng: np.random.Generator) -> list[Scored]:
        out: list[Scored | None] = [None] * len(frames)
        direct = []
        for k, f in enumerate(frames):
            if self.bank is not None and f.gain == 1.0:
                variants = self.bank[(f.group, f.image)]
                out[k] = variants[int(rng.integers(len(variants)))]
            else:
                direct.append(k)
        if direct:
            scored = self.scorer.score([self.jitter.apply(self.images[frames[k].group][frames[k].image], rng,
                                                          frames[k].gain) for k in direct])
            for k, s in zip(direct, scored):
                out[k] = s
        return out  # type: ignore[return-value]

    def run(self, engine: AlertEngine, start: int, n: int, rng: np.random.Generator, new_rate: float,
            gain_of=None, stop=None, desc: str = "") -> list[Record]:
        """Frames ``start`` .. ``start + n - 1`` through ``engine``; ``stop(records)`` ends early."""
        records: list[Record] = []
        bar = tqdm(total=n, desc=desc, unit="frame", disable=not self.progress, leave=False)
        idx, end = start, start + n
        try:
            while idx < end:
                frames = [self.draw(i, rng, new_rate, 1.0 if gain_of is None else gain_of(i))
                          for i in range(idx, min(end, idx + CHUNK))]
                for f, s in zip(frames, self.judge(frames, rng)):
                    obs = Observation(inspection_id=f.idx, time=T0 + timedelta(seconds=f.idx), a=s.a,
                                      decision=s.decision, verdict=s.verdict, kind=s.kind,
                                      descriptor=s.descriptor, input_ok=s.ok)
                    alerts = [{"rule": a.rule, "key": a.key, "kind": a.kind, "evidence": list(a.evidence),
                               "message": a.message} for a in engine.observe(obs)]
                    records.append(Record(f.idx, f.role, f.group, s.ok and s.decision == "anomalous", f.gain, alerts))
                    bar.update(1)
                    if stop is not None and stop(records):
                        return records
                idx += len(frames)
            return records
        finally:
            bar.close()


def make_engine(settings: ServiceSettings, known: KnownKinds) -> AlertEngine:
    """The service's rules (built by ``AlertFeed`` from ``settings``), the new-kind rule given
    ``known``; no sinks."""
    with tempfile.TemporaryDirectory() as d:
        feed = AlertFeed(settings, Path(d), on_alert=lambda alert: None, already_raised=lambda key: False,
                         known_kinds=lambda: known)
        feed.refit_known_kinds()
        rules = list(feed.engine.rules)
        feed.close()
    return AlertEngine(rules)


# ----------------------------------------------------------------------------- measurements

def purity(alert: dict[str, Any], roles: dict[int, str]) -> float:
    ev = alert["evidence"]
    return sum(roles.get(i) == NEW for i in ev) / len(ev) if ev else 0.0


def alerts_of(records: list[Record]) -> list[dict[str, Any]]:
    return [{"frame": r.idx, **a} for r in records for a in r.alerts]


def normal_phase_metrics(records: list[Record], n: int, armed: dict[str, int]) -> dict[str, Any]:
    alerts = alerts_of(records)
    by_rule = Counter(a["rule"] for a in alerts)
    armed_frames = {rule: max(0, n - at) for rule, at in armed.items()}
    return {"frames": n, "alerts": len(alerts), "by_rule": dict(by_rule),
            "per_10k": 1e4 * len(alerts) / n,
            "armed_frames": armed_frames,
            "flag_rate": sum(r.flagged for r in records) / max(1, len(records)),
            "flag_rate_normal_parts": _share([r.flagged for r in records if r.role == NORMAL]),
            "list": [{k: v for k, v in a.items() if k != "evidence"} | {"evidence_n": len(a["evidence"])}
                     for a in alerts]}


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def new_kind_metrics(records: list[Record], n: int) -> dict[str, Any]:
    roles = {r.idx: r.role for r in records}
    new_frames = [r.idx for r in records if r.role == NEW]
    out: dict[str, Any] = {"frames": len(records), "new_parts": len(new_frames),
                           "new_parts_flagged": sum(r.flagged for r in records if r.role == NEW)}
    alerts = alerts_of(records)
    for a in alerts:
        a["purity"] = purity(a, roles) if a["rule"] == "new_kind" else None
    out["alerts"] = [{k: v for k, v in a.items() if k != "evidence"} for a in alerts]
    if not new_frames:
        return out
    first = new_frames[0]

    def delay(alert: dict[str, Any] | None) -> dict[str, Any] | None:
        if alert is None:
            return None
        return {"frames": alert["frame"] - first, "parts": sum(1 for i in new_frames if i <= alert["frame"]),
                "frame": alert["frame"], "kind": alert.get("kind"), "key": alert["key"]}

    nk = [a for a in alerts if a["rule"] == "new_kind" and a["frame"] >= first]
    out["first_new_part"] = first
    out["new_kind_alert"] = delay(next((a for a in nk if a["purity"] >= 0.5), None))
    out["new_kind_impure_alerts"] = sum(a["purity"] < 0.5 for a in nk)
    out["rate_alert"] = delay(next((a for a in alerts if a["rule"] == "defect_rate" and a["frame"] >= first), None))
    out["other_alerts"] = Counter(a["rule"] for a in alerts if a["rule"] not in ("new_kind", "defect_rate"))
    return out


def drift_metrics(records: list[Record], n: int, pre_flag_rate: float) -> dict[str, Any]:
    alerts = alerts_of(records)
    drift = next((a for a in alerts if a["rule"] == "normal_drift"), None)
    before = [r for r in records if drift is None or r.idx < drift["frame"]]
    out: dict[str, Any] = {"frames": len(records), "alerts": [{k: v for k, v in a.items() if k != "evidence"}
                                                              for a in alerts]}
    out["drift_alert"] = None if drift is None else {
        "frames": drift["frame"] - n, "frame": drift["frame"], "key": drift["key"],
        "gain": next(r.gain for r in records if r.idx == drift["frame"])}
    out["flagged_before"] = sum(r.flagged for r in before)
    out["flagged_normals_before"] = sum(r.flagged for r in before if r.role == NORMAL)
    out["expected_flagged_before"] = pre_flag_rate * len(before)
    out["frames_before"] = len(before)
    out["other_alerts_before"] = dict(Counter(a["rule"] for a in alerts
                                              if a["rule"] != "normal_drift" and (drift is None or a["frame"] < drift["frame"])))
    return out


def stats(values: list[float | None]) -> dict[str, Any]:
    got = [float(v) for v in values if v is not None]
    return {"n": len(got), "of": len(values), "mean": statistics.fmean(got) if got else None,
            "min": min(got) if got else None, "max": max(got) if got else None, "values": values}


# ----------------------------------------------------------------------------- setup checks

def base_scores(scorer: Scorer, images: dict[str, list[np.ndarray]]) -> dict[str, list[Scored]]:
    """Every unique image once, no jitter."""
    return {g: [s for start in range(0, len(imgs), CHUNK) for s in scorer.score(imgs[start:start + CHUNK])]
            for g, imgs in images.items()}


def novelty_share(known: KnownKinds, margin: float, scored: list[Scored]) -> float | None:
    """Share of flagged parts beyond ``margin`` radii of every known kind (what NewAnomalyKind calls novel)."""
    flagged = [s for s in scored if s.ok and s.decision == "anomalous" and s.descriptor is not None]
    if not flagged:
        return None
    novel = 0
    for s in flagged:
        novel += bool(known.ratios(known.standardise(np.asarray(s.descriptor))).min() > margin)
    return novel / len(flagged)


def drift_response(scorer: Scorer, normals: list[np.ndarray], sd: float) -> list[dict[str, float]]:
    """Mean shift of A (in normal-A sd) and flagged share of the normals at each gain, no jitter."""
    rows, base = [], None
    for gain in DRIFT_GAINS:
        scored = [s for start in range(0, len(normals), CHUNK)
                  for s in scorer.score([np.clip(x * gain, 0, 1) for x in normals[start:start + CHUNK]])]
        a = np.array([s.a for s in scored])
        base = a if base is None else base
        rows.append({"gain": gain, "shift_sd": float((a - base).mean() / sd),
                     "flagged": float(np.mean([s.decision == "anomalous" for s in scored]))})
    return rows


# ----------------------------------------------------------------------------- report

def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(summary: dict[str, Any]) -> list[str]:
    lines = ["| measure | mean | min | max | runs with a value |", "|---|---:|---:|---:|---:|"]
    for label, st, digits in summary["rows"]:
        lines.append(f"| {label} | {fmt(st['mean'], digits)} | {fmt(st['min'], digits)} | {fmt(st['max'], digits)} "
                     f"| {st['n']} / {st['of']} |")
    return lines


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []

    def add(label: str, values: list[Any], digits: int = 1) -> None:
        rows.append((label, stats(values), digits))

    add("normal phase: false alerts (all rules)", [r["normal"]["alerts"] for r in results], 2)
    add("normal phase: false alerts per 10,000 frames", [r["normal"]["per_10k"] for r in results], 1)
    rules = sorted({k for r in results for k in list(r["normal"]["by_rule"]) + list(r["normal"]["armed_frames"])})
    for rule in rules:
        add(f"  {rule}: per 10,000 armed frames",
            [1e4 * r["normal"]["by_rule"].get(rule, 0) / r["normal"]["armed_frames"][rule]
             if r["normal"]["armed_frames"].get(rule) else None for r in results], 1)
    add("normal phase: share of parts flagged (%)", [100 * r["normal"]["flag_rate"] for r in results], 2)
    s1 = [r["new_kind"] for r in results]
    add("new kind: frames to the new-kind alert", [_get(x, "new_kind_alert", "frames") for x in s1], 0)
    add("new kind: new-kind parts to the new-kind alert", [_get(x, "new_kind_alert", "parts") for x in s1], 1)
    add("new kind: frames to the first defect-rate alert", [_get(x, "rate_alert", "frames") for x in s1], 0)
    add("new kind: new-kind parts to the defect-rate alert", [_get(x, "rate_alert", "parts") for x in s1], 1)
    add("new kind: new-kind alerts not made of the new kind", [x.get("new_kind_impure_alerts") for x in s1], 1)
    add("new kind: share of new-kind parts flagged (%)",
        [100 * x["new_parts_flagged"] / x["new_parts"] if x["new_parts"] else None for x in s1], 1)
    s2 = [r["drift"] for r in results]
    add("drift: frames from drift start to the NormalDrift alert", [_get(x, "drift_alert", "frames") for x in s2], 0)
    add("drift: gain at the alert", [_get(x, "drift_alert", "gain") for x in s2], 3)
    add("drift: parts flagged before the alert", [x["flagged_before"] for x in s2], 1)
    add("drift:   of them normal parts", [x["flagged_normals_before"] for x in s2], 1)
    add("drift:   expected at the pre-drift flag rate", [x["expected_flagged_before"] for x in s2], 1)
    return {"rows": rows}


def _get(d: dict[str, Any], key: str, field_: str) -> Any:
    v = d.get(key)
    return None if v is None else v[field_]


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("demo_out/runs/ganomaly-ssim-ssim"))
    ap.add_argument("--data", type=Path, default=Path("demo_out/surfaces"), help="surface maps, MVTec layout")
    ap.add_argument("--supervised", type=Path, default=None,
                    help="defect-kind model trained without --new-kind (two-stage verdicts)")
    ap.add_argument("--new-kind", default="plate_rift")
    ap.add_argument("--normals", type=int, default=3000, help="frames of the normal phase (N)")
    ap.add_argument("--rate", type=float, default=0.02, help="share of new-kind parts from frame N on")
    ap.add_argument("--baseline", type=float, default=0.01, help="share of known-kind defects throughout")
    ap.add_argument("--after", type=int, default=3000, help="most frames of the new-kind phase")
    ap.add_argument("--drift-gain", type=float, default=0.90, help="gain the lighting reaches")
    ap.add_argument("--drift-frames", type=int, default=2000, help="frames the gain ramp takes (K)")
    ap.add_argument("--drift-tail", type=int, default=500, help="frames at the final gain before giving up")
    ap.add_argument("--normal-pool", choices=("train+test", "test"), default="train+test")
    ap.add_argument("--noise-sd", type=float, default=0.004, help="jitter noise sd (surface map in [0, 1])")
    ap.add_argument("--variants", default="auto",
                    help="0: score every jittered frame; V: score each unique image in V jittered variants; "
                         "auto: 0 unless the full run would pass --budget-min")
    ap.add_argument("--budget-min", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/alerts_stream/results.json"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not 0 <= args.rate < 1 or not 0 <= args.baseline < 1 or args.rate + args.baseline >= 1:
        ap.error("--rate and --baseline are shares in [0, 1) with a sum under 1")
    if min(args.normals, args.after, args.drift_frames, args.repeats, args.threads) < 1 or args.drift_tail < 0:
        ap.error("--normals, --after, --drift-frames, --repeats and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    progress = not args.no_progress
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    log = tqdm.write
    started = time.perf_counter()

    inspector = Inspector.load(args.run, threads=args.threads, supervised=args.supervised)
    if inspector.supervised is not None:
        names = getattr(inspector.supervised, "class_names", None)
        if names and args.new_kind in names:
            raise SystemExit(f"--supervised knows {args.new_kind!r} ({names}): it must be trained without the new kind")
    settings = ServiceSettings(run=args.run, supervised=args.supervised)
    pools, notes = find_pools(args.data, inspector, args.new_kind, args.normal_pool)
    for note in notes:
        log(note)
    images = {NORMAL: read_all(pools.normal_paths), args.new_kind: read_all(pools.new_paths)}
    for kind, paths in pools.known.items():
        images[kind] = read_all(paths)
    jitter = measured_jitter(pools.normal_paths, images[NORMAL], args.noise_sd)
    log(f"jitter per frame: gain sd {jitter.gain_sd:.4f}, contrast sd {jitter.contrast_sd:.4f} (the spread of the "
        f"set's normal surface maps within a package type), noise sd {jitter.noise_sd:.4f}")

    tmp_parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="alerts_stream_", dir=tmp_parent))
    try:
        result = _measure(args, inspector, settings, pools, images, jitter, tmp, progress, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    result["notes"] = notes
    result["command"] = " ".join([sys.executable, *sys.argv]) if argv is None else " ".join(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(json_safe(result), indent=1))
    log(f"wrote {args.out} ({result['seconds']:.0f} s)")


def run_repeat(stream: Stream, settings: ServiceSettings, known: KnownKinds, args: argparse.Namespace,
               seed: int, name: str) -> dict[str, Any]:
    """One normal phase, then both scenarios from copies of the engine at its end."""
    n = args.normals
    engine = make_engine(settings, known)
    drift_rule = next(rule for rule in engine.rules if rule.name == "normal_drift")
    normal = stream.run(engine, 0, n, np.random.default_rng([seed, 0]), 0.0, desc=f"{name}: normal")
    # When each rule starts judging: the rate chart after its baseline parts, NormalDrift once it
    # has learned its reference from the first passing parts.
    armed = {"defect_rate": settings.rate_baseline_n, "new_kind": 0, "input_health": 0}
    passing = [rec.idx for rec in normal if not rec.flagged]
    ref_n = drift_rule.reference_n
    armed["normal_drift"] = passing[ref_n - 1] + 1 if len(passing) >= ref_n else n
    nm = normal_phase_metrics(normal, n, armed)

    found: dict[str, bool] = {}

    def stop_new_kind(records: list[Record]) -> bool:
        for a in records[-1].alerts:
            if a["rule"] == "defect_rate" and any(x.role == NEW for x in records):
                found["rate"] = True
            if a["rule"] == "new_kind" and purity(a, {x.idx: x.role for x in records}) >= 0.5:
                found["new"] = True
        return found.get("rate", False) and found.get("new", False)

    s1 = stream.run(copy.deepcopy(engine), n, args.after, np.random.default_rng([seed, 1]), args.rate,
                    stop=stop_new_kind, desc=f"{name}: new kind")

    def gain_of(i: int) -> float:
        return 1.0 + (args.drift_gain - 1.0) * min(1.0, (i - n + 1) / args.drift_frames)

    s2 = stream.run(copy.deepcopy(engine), n, args.drift_frames + args.drift_tail, np.random.default_rng([seed, 2]),
                    0.0, gain_of=gain_of, stop=lambda recs: any(a["rule"] == "normal_drift" for a in recs[-1].alerts),
                    desc=f"{name}: drift")
    return {"seed": seed, "normal": nm, "new_kind": new_kind_metrics(s1, n),
            "drift": drift_metrics(s2, n, nm["flag_rate"])}


def _measure(args: argparse.Namespace, inspector: Inspector, settings: ServiceSettings, pools: Pools,
             images: dict[str, list[np.ndarray]], jitter: Jitter, tmp: Path, progress: bool, log) -> dict[str, Any]:
    scorer = Scorer(inspector, tmp)

    # Every unique image once: known kinds for KnownKinds, flag rates, and the speed of the path.
    t0 = time.perf_counter()
    base = base_scores(scorer, images)
    n_unique = sum(len(v) for v in images.values())
    base_ms = 1000 * (time.perf_counter() - t0) / n_unique
    one = [scorer.score([x], batch_size=1)[0].a for x in images[NORMAL][:4]]
    batch_diff = max(abs(a - s.a) for a, s in zip(one, base[NORMAL][:4]))
    log(f"scored {n_unique} unique images once: {base_ms:.1f} ms/frame (PNG round trip, Inspector, describe_map; "
        f"{args.threads} thread(s)); batch {CHUNK} vs batch 1: max |dA| {batch_diff:.2g}")
    flag = {}
    origin = np.array(pools.normal_origin)
    normal_flags = np.array([s.decision == "anomalous" for s in base[NORMAL]])
    for o in ("train", "test"):
        if (origin == o).any():
            flag[f"normal ({o})"] = float(normal_flags[origin == o].mean())
    for g in [*sorted(pools.known), pools.new_kind]:
        flag[g] = float(np.mean([s.decision == "anomalous" for s in base[g]]))
    log("flagged without jitter: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in flag.items()))
    verdicts = {g: dict(Counter(s.verdict for s in base[g])) for g in base}
    if inspector.supervised is not None:
        log("two-stage verdicts without jitter: " + "; ".join(
            f"{g}: " + ", ".join(f"{v} {c}" for v, c in sorted(vs.items())) for g, vs in verdicts.items()))

    passing = [s for s in base[NORMAL] if s.ok and s.decision == "normal"]
    desc = [s.descriptor for g in sorted(pools.known) for s in base[g]] + [s.descriptor for s in passing]
    labels = [g for g in sorted(pools.known) for _ in base[g]] + [NORMAL_KIND] * len(passing)
    known = fit_known_kinds(desc, labels, settings.new_kind_min_samples, settings.new_kind_min_normals)
    if known is None:
        raise SystemExit(f"only {len(passing)} normal images pass: the new-kind rule needs "
                         f"{settings.new_kind_min_normals} for its reference of normal")
    margin = settings.new_kind_margin
    novel = {"normal (flagged)": novelty_share(known, margin, base[NORMAL]),
             **{g: novelty_share(known, margin, base[g]) for g in sorted(pools.known)},
             pools.new_kind: novelty_share(known, margin, base[pools.new_kind])}
    log(f"KnownKinds fitted on the test images of the known kinds and {len(passing)} passing normals: "
        f"{', '.join(known.names)} (radii "
        f"{', '.join(f'{r:.2f}' for r in known.radii)}, eps {known.eps:.2f}); flagged parts NewAnomalyKind would "
        "call novel: " + ", ".join(f"{k} {'-' if v is None else f'{100 * v:.0f} %'}" for k, v in novel.items()))

    a_normal = np.array([s.a for s in base[NORMAL]])
    test_normals = [x for x, o in zip(images[NORMAL], pools.normal_origin) if o == "test"] or images[NORMAL]
    response = drift_response(scorer, test_normals, float(a_normal.std(ddof=1)))
    log("gain on the surface maps -> shift of A (normal sd) / flagged: " + ", ".join(
        f"{r['gain']:.2f}: {r['shift_sd']:+.2f} / {100 * r['flagged']:.0f} %" for r in response))

    # Direct scoring or a variant bank: measured, then chosen.
    worst = FULL["repeats"] * (FULL["normals"] + args.after + args.drift_frames + args.drift_tail)
    if args.variants == "auto":
        direct_min = worst * base_ms / 60000
        variants = 0 if direct_min <= args.budget_min else 8
        log(f"scoring every jittered frame: {base_ms:.1f} ms/frame, at most {worst} frames at full size "
            f"(--normals {FULL['normals']} --repeats {FULL['repeats']}) = {direct_min:.0f} min -> "
            + ("score frames directly" if variants == 0 else f"over --budget-min: a bank of {variants} variants per image"))
    else:
        variants = int(args.variants)
    stream = Stream(scorer, images, jitter, pools, args, progress)
    if variants > 0:
        stream.build_bank(variants, np.random.default_rng([args.seed, 99]))

    rate_baseline_n = settings.rate_baseline_n
    if args.normals < rate_baseline_n:
        log(f"note: --normals {args.normals} < the rate chart's baseline ({rate_baseline_n} parts): it is still "
            f"learning its baseline when the scenarios start (a smoke run, not a measurement)")
    scored_before = (scorer.frames, scorer.seconds)
    n = args.normals
    results = []
    for r in range(args.repeats):
        res = run_repeat(stream, settings, known, args, args.seed + r, f"repeat {r + 1}")
        results.append(res)
        nm, m1, m2 = res["normal"], res["new_kind"], res["drift"]
        log(f"repeat {r + 1}: normal phase {nm['alerts']} alerts {dict(nm['by_rule'])}, flagged "
            f"{100 * nm['flag_rate']:.1f} %; new kind: alert after {_get(m1, 'new_kind_alert', 'frames')} frames / "
            f"{_get(m1, 'new_kind_alert', 'parts')} parts, rate alert after {_get(m1, 'rate_alert', 'frames')} frames; "
            f"drift: alert after {_get(m2, 'drift_alert', 'frames')} frames (gain "
            f"{fmt(_get(m2, 'drift_alert', 'gain'), 3)}), {m2['flagged_before']} flagged before it")

    frames = scorer.frames - scored_before[0]
    ms = 1000 * (scorer.seconds - scored_before[1]) / max(1, frames)
    summary = summarise(results)
    lines = table(summary)
    per_repeat = frames / args.repeats
    extra = FULL["normals"] - n  # frames the full normal phase adds per repeat
    est_frames = FULL["repeats"] * (per_repeat + extra)
    est_min = est_frames * ms / 60000
    lines += ["", f"{args.repeats} repeat(s), N = {n} normal-phase frames, new kind '{pools.new_kind}' at "
              f"{100 * args.rate:g} %, known kinds {', '.join(sorted(pools.known))} at {100 * args.baseline:g} %, "
              f"drift to gain {args.drift_gain:g} over {args.drift_frames} frames; "
              f"{frames} frames scored in the streams at {ms:.1f} ms/frame"
              + (f" (+ a bank of {variants} variants per image)" if variants else " (every frame scored)") + ".",
              (f"Estimated stream time at --normals {FULL['normals']} --repeats {FULL['repeats']}: about "
               f"{est_min:.0f} min ({est_frames:.0f} frames; the scenario phases' lengths as in this run) "
               f"+ about {(n_unique + len(test_normals) * len(DRIFT_GAINS)) * base_ms / 1000:.0f} s of setup.")]
    print("\n".join(lines))
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rules": {"rate_window": settings.rate_window, "rate_baseline_n": settings.rate_baseline_n,
                  "input_health_window": settings.input_health_window,
                  "input_health_limit": settings.input_health_limit,
                  "new_kind": {k: v for k, v in settings.model_dump().items() if k.startswith("new_kind")}},
        "pools": {"normal": len(pools.normal_paths), "normal_from_train": pools.normal_origin.count("train"),
                  "known": {k: len(v) for k, v in pools.known.items()}, "new": len(pools.new_paths)},
        "jitter": vars(jitter), "variants": variants,
        "ms_per_frame": {"unique_once": base_ms, "stream": ms}, "batch_vs_single_max_dA": batch_diff,
        "flagged_without_jitter": flag, "verdicts_without_jitter": verdicts, "known_kinds": known.to_dict(), "novel_share": novel,
        "drift_response": response,
        "summary": [{"measure": label, **st} for label, st, _ in summary["rows"]],
        "table": lines, "repeats": results,
        "estimate_full_min": est_min,
    }


if __name__ == "__main__":
    main()
