"""Calibration: the stage between scores and the decision, and the one decision rule.

From the scores of normal images the run has never trained on it fits
  * the z-score statistics that put R and L on one scale, A = lam * z(R) + (1 - lam) * z(L);
  * the image threshold on A, a split-conformal quantile for a target false-alarm rate;
  * the pixel threshold of the anomaly map (the 99.9th percentile of normal pixels), used for
    regions and pre-labels and as the basis of the maps' colour scale.

Why a conformal quantile: a plain percentile of a few normals sits near their maximum and
promises nothing (7 normals at the 99th percentile flagged 12 % of new normals). With n normals
and the k-th smallest of their scores as threshold, a new normal exceeds it with probability
(n + 1 - k) / (n + 1) when new and calibration normals are exchangeable; k = ceil((n + 1)(1 - rate))
is the smallest that keeps this at or under the target. The rate itself, given one calibration
set, is Beta(n + 1 - k, k) distributed; its 95th percentile is reported as the upper bound. A
target below 1 / (n + 1) cannot be met with n normals: the threshold is then their maximum and
the run says how many normals the target needs.

The z-score statistics come from the same normals: ranks under A depend on them only through
one number (the ratio of the two spreads; with lam = 1, on nothing at all), so the guarantee
holds up to that fitted ratio. ``benchmarks/false_alarms.py`` measures the realised rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

DEFAULT_RATE = 0.01
PIXEL_QUANTILE = 0.999


class CalibrationError(ValueError):
    """Calibration cannot be fitted from what was given."""


@dataclass
class Calibration:
    """What turns raw scores into a decision; stored in the run and in exported models."""

    r_mean: float
    r_std: float
    l_mean: float
    l_std: float
    threshold: float                       # on A: anomalous when A > threshold
    n_images: int                          # normals that set the statistics and the threshold
    target_rate: float = DEFAULT_RATE      # the false-alarm rate asked for
    expected_rate: float = float("nan")    # expected rate on new normals at this threshold
    rate_upper: float = float("nan")       # 95 % upper bound on the rate, given these normals
    pixel_threshold: float | None = None   # map value above which a pixel counts as anomalous
    source: str = ""                       # where the normals came from

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Also reads runs saved before calibration was its own stage (percentile, map_high)."""
        d = dict(d)
        if "a_percentile" in d:
            d.setdefault("target_rate", 1.0 - float(d.pop("a_percentile")) / 100.0)
        if "map_high" in d:
            d.setdefault("pixel_threshold", d.pop("map_high"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for people: the rate asked for, what to expect, and what limits it."""
        text = (f"threshold A > {self.threshold:.3f} from {self.n_images} normal images: expected false-alarm rate "
                f"{self.expected_rate:.2%} (95 % bound {self.rate_upper:.2%}), target {self.target_rate:.2%}")
        if self.expected_rate > self.target_rate * (1 + 1e-9):
            text += f"; the target needs at least {normals_needed(self.target_rate)} normal images"
        return text


def combined_score(r: np.ndarray, l: np.ndarray, cal: Calibration, lam: float) -> np.ndarray:
    """A = lam * z(R) + (1 - lam) * z(L), z-scores from the calibration normals."""
    zr = (np.asarray(r) - cal.r_mean) / cal.r_std
    zl = (np.asarray(l) - cal.l_mean) / cal.l_std
    return lam * zr + (1.0 - lam) * zl


def decide(a: np.ndarray | float, threshold: float) -> np.ndarray:
    """The decision rule, in one place: True (anomalous) where A is above the threshold."""
    return np.asarray(a) > threshold


def verdict(a: float, threshold: float) -> str:
    return "anomalous" if bool(decide(a, threshold)) else "normal"


def normals_needed(rate: float) -> int:
    """Fewest calibration normals for which a conformal threshold can promise ``rate``."""
    return math.ceil(1.0 / rate - 1.0 - 1e-9)


def conformal_rank(n: int, rate: float) -> int:
    """1-based rank k of the threshold among n sorted normal scores (capped at n)."""
    return min(n, math.ceil((n + 1) * (1.0 - rate) - 1e-9))


def rate_bounds(n: int, k: int) -> tuple[float, float]:
    """Expected false-alarm rate with the k-th of n normals as threshold, and its 95 % upper bound."""
    from scipy.stats import beta

    expected = (n + 1 - k) / (n + 1)
    return expected, float(beta.ppf(0.95, n + 1 - k, k))


def conformal_threshold(a: np.ndarray, rate: float) -> tuple[float, float, float]:
    """(threshold, expected rate, 95 % upper bound) from normal scores ``a`` for a target ``rate``."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    k = conformal_rank(len(a), rate)
    return (float(a[k - 1]), *rate_bounds(len(a), k))


def _safe_std(v: np.ndarray) -> float:
    # A zero spread (e.g. one validation image) would make every score infinite.
    s = float(np.std(v))
    return s if s > 1e-12 else 1e-12


def pixel_threshold(maps: torch.Tensor) -> float:
    """The 99.9th percentile of normal map pixels (subsampled to a million for speed)."""
    flat = maps.flatten()
    return float(torch.quantile(flat[:: max(1, flat.numel() // 1_000_000)].float(), PIXEL_QUANTILE))


def fit_calibration(r: np.ndarray, l: np.ndarray, lam: float, rate: float = DEFAULT_RATE,
                    maps: torch.Tensor | None = None, source: str = "") -> Calibration:
    """Statistics, conformal image threshold and pixel threshold from normal images' R, L (N,)
    and optionally their maps (N, 1, S, S)."""
    if len(r) == 0:
        raise CalibrationError("calibration needs at least one normal image the model has not trained on")
    if not 0 < rate < 1:
        raise CalibrationError(f"the false-alarm rate must be between 0 and 1, got {rate}")
    cal = Calibration(float(np.mean(r)), _safe_std(r), float(np.mean(l)), _safe_std(l), 0.0, len(r), rate,
                      pixel_threshold=pixel_threshold(maps) if maps is not None else None, source=source)
    cal.threshold, cal.expected_rate, cal.rate_upper = conformal_threshold(combined_score(r, l, cal, lam), rate)
    return cal
