"""The validation set that judges trials, kept apart from the final test, and how precise it is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aoiflow import data
from aoiflow.tune.settings import TuneSettings


@dataclass
class ValidationSet:
    """Labelled images that judge trials (with the run's held-out normals) and what the final test leaves out."""

    anomalies: list[Path]
    extra_normals: list[Path]
    excluded_from_test: set[Path]
    description: str


def validation_set(data_root: str | Path, settings: TuneSettings) -> ValidationSet:
    """Anomalies from ``--val DIR`` (``DIR/<defect>/``; ``DIR/good`` adds normals) or, without it,
    a seeded, per-defect-type fraction of ``DATA/test`` anomalies that the final test leaves out."""
    if settings.val_dir:
        return _validation_folder(Path(settings.val_dir))
    return _validation_from_test(data_root, settings)


def _validation_folder(root: Path) -> ValidationSet:
    if not root.is_dir():
        raise data.DataLayoutError(f"{root}: validation folder not found")
    kinds = sorted(p for p in root.iterdir() if p.is_dir())
    anomalies = [img for k in kinds if k.name != data.NORMAL_LABEL for img in data.list_images(k)]
    normals = data.list_images(root / data.NORMAL_LABEL) if (root / data.NORMAL_LABEL).is_dir() else []
    if not anomalies:
        raise data.DataLayoutError(f"{root}: no anomalies found; expected {root}/<defect>/*.png")
    return ValidationSet(anomalies, normals, set(),
                         f"held-out train/good normals + {len(normals)} normals and {len(anomalies)} anomalies "
                         f"from {root}; the final test uses all of DATA/test")


def _validation_from_test(data_root: str | Path, settings: TuneSettings) -> ValidationSet:
    rng = np.random.default_rng(settings.seed)
    picked: list[Path] = []
    by_kind: dict[str, list[Path]] = {}
    for s in data.test_samples(data_root):
        if s.label == 1:
            by_kind.setdefault(s.defect_type, []).append(s.path)
    if not by_kind:
        raise data.DataLayoutError(f"{data_root}/test: no anomalies to validate on; give --val DIR")
    for kind in sorted(by_kind):
        paths = sorted(by_kind[kind])
        n = max(1, round(len(paths) * settings.val_fraction))
        if n >= len(paths):
            continue  # keep a type with one image in the test rather than lose it there
        picked += [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]
    if not picked:
        raise data.DataLayoutError(f"{data_root}/test: too few anomalies to set a fraction aside; give --val DIR")
    return ValidationSet(picked, [], {p.resolve() for p in picked},
                         f"held-out train/good normals + {len(picked)} test anomalies "
                         f"({settings.val_fraction:.0%} of each defect type, seed {settings.seed}), "
                         "left out of the final test")


def auroc_standard_error(auroc: float, n_anomalous: int, n_normal: int) -> float:
    """Standard error of an AUROC from its value and class sizes (Hanley & McNeil, 1982): how far
    apart two trials must be before a validation set of this size can tell them apart. Written
    here: scikit-learn has no AUROC uncertainty, and the formula is three lines."""
    a, n1, n0 = auroc, n_anomalous, n_normal
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt(max(0.0, a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
