"""New anomaly kinds: flagged parts that fit no known kind and gather into a group.

The rule, in standardised descriptor space (each feature centred and scaled by the known
samples' pooled mean and sd, scikit-learn's ``StandardScaler``):
  * a kind is a centroid, a spread per feature (the sd of its own samples, in standardised units,
    at least ``min_spread``) and a radius: the ``quantile`` (default 0.99) of its own samples'
    distances to the centroid measured in its spread (a diagonal Mahalanobis distance; at least
    ``MIN_RADIUS``), so about 1 % of a known kind's parts fall outside it. Each kind has its own
    spread because a feature can be tight for one kind and meaningless for another (the shape of
    a passing part's faint blob, the orientation of a round stain): on one pooled scale a diffuse
    kind swallows its neighbours and a compact kind is judged by features it does not care about;
  * a flagged part *fits* a kind within its radius; it is *novel* only when it lies beyond
    ``margin`` (default 1.5) times the radius of every kind. Parts in between are left alone:
    they are the tails of known kinds, which would otherwise gather into false "new" groups;
  * reference kinds (``KnownKinds.fit(reference=...)``, the service's ``NORMAL_KIND`` of passing
    parts) count as kinds a part can fit, so a flagged part that looks like a passing one (a
    borderline normal) is never novel, but they do not set the grouping distance;
  * novel parts within the last ``window`` inspections (and/or ``window_s`` seconds) are grouped
    with DBSCAN in the pooled standardised space (``eps`` = the 0.99 quantile of distances between
    two samples of the same known, non-reference kind, ``min_samples`` = k): a group as tight as
    a known kind is found with its k-th member. Each group raises one alert and then becomes a
    provisional kind (its centroid, radius the larger of its spread and ``eps``), so later parts
    of it are quiet.

Candidates and provisional kinds keep their raw descriptors, so the known kinds can be replaced
(``NewAnomalyKind.set_known``) as labels accumulate without losing them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist
from sklearn.cluster import DBSCAN
from sklearn.preprocessing import StandardScaler

from .events import Alert, Observation
from .rules import Rule, describe_ref, key_ref, obs_ref

log = logging.getLogger(__name__)

_MAX_PER_KIND = 500  # samples per kind used for the pairwise-distance quantile (pdist is quadratic)
NORMAL_KIND = "normal"  # the reference kind of passing parts, as the service names it
MIN_RADIUS = 1.0  # a kind's smallest radius, in its spread units (a kind of identical samples has 0)


@dataclass
class KnownKinds:
    """Known anomaly kinds as centroids, spreads and radii in standardised descriptor space.

    ``centroids`` (K, D) are standardised; ``spreads`` (K, D) each kind's sd per feature in
    standardised units (None: 1, the pooled geometry); ``radii`` (K,) are in each kind's spread
    units; ``mean``/``scale`` (D,) standardise a raw descriptor; ``eps`` is the grouping radius
    for new kinds, in standardised units.
    """

    names: list[str]
    centroids: np.ndarray
    radii: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    eps: float
    spreads: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.centroids = np.asarray(self.centroids, dtype=np.float64).reshape(len(self.names), -1)
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(len(self.names))
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.scale.shape or (len(self.names) and self.centroids.shape[1] != self.dim):
            raise ValueError(f"centroids {self.centroids.shape}, mean {self.mean.shape} and scale "
                             f"{self.scale.shape} must share the descriptor length")
        spreads = np.ones_like(self.centroids) if self.spreads is None else np.asarray(self.spreads, dtype=np.float64)
        if spreads.shape != self.centroids.shape:
            raise ValueError(f"spreads {spreads.shape} must match centroids {self.centroids.shape}")
        self.spreads = spreads
        if np.any(self.scale <= 0) or self.eps <= 0 or np.any(self.radii <= 0) or np.any(self.spreads <= 0):
            raise ValueError("scale, spreads, radii and eps must be positive")

    @property
    def dim(self) -> int:
        """Descriptor length D."""
        return self.mean.shape[0]

    @classmethod
    def fit(cls, descriptors: np.ndarray, labels: Sequence[str], quantile: float = 0.99,
            group_quantile: float = 0.99, seed: int = 0, per_kind: bool = True,
            reference: Collection[str] = (), min_spread: float = 0.05) -> KnownKinds:
        """From labelled descriptors (N, D): per-kind centroids, spreads and radii, and the grouping
        eps from the kinds not in ``reference`` (from all when every kind is a reference).
        ``per_kind=False``: one pooled scale for every kind (spreads 1)."""
        x = np.asarray(descriptors, dtype=np.float64)
        labels = np.asarray(labels)
        if x.ndim != 2 or x.shape[0] != labels.shape[0]:
            raise ValueError(f"need descriptors (N, D) and N labels, got {x.shape} and {labels.shape}")
        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        names = sorted(set(labels.tolist()))
        grouping = [n for n in names if n not in reference] or names
        rng = np.random.default_rng(seed)
        centroids, spreads, radii, pairs = [], [], [], {}
        for name in names:
            zk = z[labels == name]
            if len(zk) < 2:
                raise ValueError(f"kind {name!r} needs at least 2 samples, got {len(zk)}")
            centroids.append(zk.mean(axis=0))
            spreads.append(np.maximum(zk.std(axis=0, ddof=1), min_spread) if per_kind else np.ones(z.shape[1]))
            distances = np.linalg.norm((zk - centroids[-1]) / spreads[-1], axis=1)
            radii.append(max(float(np.quantile(distances, quantile)), MIN_RADIUS))
            pairs[name] = pdist(zk[rng.choice(len(zk), _MAX_PER_KIND, replace=False)] if len(zk) > _MAX_PER_KIND else zk)
        eps = float(np.quantile(np.concatenate([pairs[n] for n in grouping]), group_quantile))
        if eps <= 0:  # the grouping kinds' samples are all alike: take every kind's
            eps = float(np.quantile(np.concatenate(list(pairs.values())), group_quantile))
        return cls(names, np.array(centroids), np.array(radii), scaler.mean_, scaler.scale_, eps, np.array(spreads))

    @classmethod
    def from_centroids(cls, centroids: Mapping[str, Sequence[float]], radii: Mapping[str, float],
                       mean: Sequence[float] | None = None, scale: Sequence[float] | None = None,
                       eps: float | None = None) -> KnownKinds:
        """From raw-space centroids and radii in standardised units (raw units without mean/scale),
        one pooled scale for every kind.

        ``eps`` defaults to sqrt(2) times the median radius (two draws of one Gaussian kind lie
        about sqrt(2) times as far apart as a draw from its centre).
        """
        names = sorted(centroids)
        raw = np.array([np.asarray(centroids[n], dtype=np.float64) for n in names])
        d = raw.shape[1]
        mean_ = np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64)
        scale_ = np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64)
        r = np.array([float(radii[n]) for n in names])
        eps_ = float(eps) if eps is not None else float(np.sqrt(2) * np.median(r))
        return cls(names, (raw - mean_) / scale_, r, mean_, scale_, eps_)

    def standardise(self, descriptor: np.ndarray) -> np.ndarray:
        """Raw (D,) or (N, D) descriptors -> standardised, the same shape."""
        x = np.asarray(descriptor, dtype=np.float64)
        if x.shape[-1] != self.dim:
            raise ValueError(f"descriptor has {x.shape[-1]} features, the known kinds have {self.dim}")
        return (x - self.mean) / self.scale

    def ratios(self, z: np.ndarray) -> np.ndarray:
        """A standardised descriptor's distance to each kind, in the kind's spread, over its radius (K,)."""
        return np.linalg.norm((np.asarray(z) - self.centroids) / self.spreads, axis=1) / self.radii

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"names": list(self.names), "centroids": self.centroids.tolist(), "radii": self.radii.tolist(),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "eps": self.eps,
                "spreads": self.spreads.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KnownKinds:
        """Inverse of ``to_dict`` (a dict without "spreads" is the pooled geometry)."""
        spreads = d.get("spreads")
        return cls(list(d["names"]), np.asarray(d["centroids"]), np.asarray(d["radii"]), np.asarray(d["mean"]),
                   np.asarray(d["scale"]), float(d["eps"]), None if spreads is None else np.asarray(spreads))


class NewAnomalyKind(Rule):
    """Alert when at least ``k`` novel flagged parts gather into one group (see the module doc).

    Considers parts with decision "anomalous" and verdict "anomaly" or "unknown_anomaly" that carry
    a descriptor; "defect:<kind>" verdicts were recognised by the defect-kind model and are skipped.
    ``window`` counts every observation; ``window_s`` (optional) also bounds the group's age.

    ``known`` is what counts as known; the rule is idle (counting ``skipped_no_known``) while it is
    None. The line service (``service/known_kinds.py``) builds it from its store and refits it as
    inspections accumulate: the kinds the supervised model named (verdict "defect:<kind>") and
    operator-reviewed defects (their review label; a review's label overrides the verdict), each
    once it has enough samples, plus the reference kind ``NORMAL_KIND`` from recent passing parts
    and flagged parts reviewed as false alarms. Without a supervised model or reviews every kind is
    new once: the first group of alike defects raises the alert that asks for a label.

    The alert's ``evidence`` lists the group's inspection ids (the API links each to its image,
    overlay and scores); ``details["members"]`` has each one's id, time and score A.
    """

    def __init__(self, known: KnownKinds | None, k: int = 5, window: int = 1000, window_s: float | None = None,
                 margin: float = 1.5, name: str = "new_kind") -> None:
        if k < 2 or window < k or margin < 1:
            raise ValueError("need k >= 2, window >= k and margin >= 1")
        self.known, self.k, self.window, self.window_s, self.margin, self.name = (
            known, k, window, window_s, margin, name)
        self._seq = 0
        self._candidates: deque[dict[str, Any]] = deque()
        self._new_kinds: list[dict[str, Any]] = []
        self.skipped_no_descriptor = 0
        self.skipped_no_known = 0

    def set_known(self, known: KnownKinds | None) -> None:
        """Replace the known kinds; candidates and provisional kinds with descriptors of another
        length are dropped (the rest are judged in the new kinds' scale from now on)."""
        self.known = known
        if known is not None:
            self._candidates = deque(c for c in self._candidates if len(c["x"]) == known.dim)
            self._new_kinds = [g for g in self._new_kinds if len(g["members_x"][0]) == known.dim]

    def observe(self, obs: Observation) -> list[Alert]:
        self._seq += 1
        self._expire(obs.time)
        if not (obs.input_ok and obs.flagged and obs.verdict in ("anomaly", "unknown_anomaly")):
            return []
        if obs.descriptor is None:
            self.skipped_no_descriptor += 1
            return []
        if self.known is None:
            self.skipped_no_known += 1
            return []
        ratios = self._ratios(self.known.standardise(obs.descriptor))
        if ratios.size and ratios.min() <= self.margin:  # fits a kind, or too close to one to call new
            return []
        self._candidates.append({"seq": self._seq, "x": obs.descriptor.tolist(), "a": obs.a, **obs_ref(obs)})
        return self._group(obs)

    def _provisional(self, known: KnownKinds) -> tuple[np.ndarray, np.ndarray]:
        """Centroids (G, D) and radii (G,) of the provisional kinds in ``known``'s standardised space."""
        cents, radii = [], []
        for g in self._new_kinds:
            z = known.standardise(np.asarray(g["members_x"]))
            cents.append(z.mean(axis=0))
            radii.append(max(float(np.linalg.norm(z - cents[-1], axis=1).max()), known.eps))
        return np.array(cents).reshape(-1, known.dim), np.array(radii)

    def _ratios(self, z: np.ndarray) -> np.ndarray:
        """Distance to each kind (known, then provisional) over its radius."""
        cents, radii = self._provisional(self.known)
        provisional = np.linalg.norm(cents - z, axis=1) / radii if len(radii) else np.empty(0)
        known = self.known.ratios(z) if self.known.names else np.empty(0)
        return np.concatenate([known, provisional])

    def _expire(self, now: datetime) -> None:
        oldest_seq = self._seq - self.window
        oldest_time = None if self.window_s is None else now - timedelta(seconds=self.window_s)
        while self._candidates and (self._candidates[0]["seq"] <= oldest_seq or (
                oldest_time is not None and datetime.fromisoformat(self._candidates[0]["time"]) < oldest_time)):
            self._candidates.popleft()

    def _group(self, obs: Observation) -> list[Alert]:
        if len(self._candidates) < self.k:
            return []
        z = self.known.standardise(np.array([c["x"] for c in self._candidates]))
        labels = DBSCAN(eps=self.known.eps, min_samples=self.k).fit_predict(z)
        alerts = []
        for label in sorted(set(labels.tolist()) - {-1}):
            members = [c for c, lab in zip(self._candidates, labels) if lab == label]
            alerts.append(self._new_kind(members, z[labels == label], obs))
        if alerts:
            self._candidates = deque(c for c, lab in zip(self._candidates, labels) if lab == -1)
        return alerts

    def _new_kind(self, members: list[dict[str, Any]], z: np.ndarray, obs: Observation) -> Alert:
        cluster_id = key_ref(members[0])
        ratios = self.known.ratios(z.mean(axis=0)) if self.known.names else np.empty(0)
        nearest = (self.known.names[int(ratios.argmin())], float(ratios.min())) if ratios.size else (None, None)
        self._new_kinds.append({"cluster_id": cluster_id, "members_x": [m["x"] for m in members],
                                "size": len(members)})
        ids = [m["id"] for m in members if m["id"] is not None]
        near = f"; nearest known kind '{nearest[0]}' at {nearest[1]:.1f} times its radius" if nearest[0] else ""
        message = (f"Possible new kind of anomaly: {len(members)} flagged parts within the last {self.window} "
                   f"inspections look alike and fit none of the known kinds ({', '.join(self.known.names) or 'none'})"
                   f"{near}. First seen at {describe_ref(members[0])}. Review them and label the kind.")
        details = {"cluster_id": cluster_id, "size": len(members), "nearest_kind": nearest[0],
                   "nearest_ratio": nearest[1], "eps": self.known.eps, "k": self.k, "window": self.window,
                   "first": {"id": members[0]["id"], "time": members[0]["time"]},
                   "members": [{"id": m["id"], "time": m["time"], "a": m["a"]} for m in members]}
        return Alert(key=f"new_kind:{cluster_id}", rule=self.name, kind=None, severity="warning",
                     message=message, time=obs.time, evidence=ids, details=details)

    def state_dict(self) -> dict[str, Any]:
        return {"seq": self._seq, "candidates": [dict(c) for c in self._candidates],
                "new_kinds": [dict(g) for g in self._new_kinds], "skipped_no_descriptor": self.skipped_no_descriptor,
                "skipped_no_known": self.skipped_no_known}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``; candidates and groups saved in an older form (standardised, not
        raw descriptors) cannot be re-judged and are dropped, with a warning."""
        candidates = [dict(c) for c in state["candidates"] if "x" in c]
        new_kinds = [dict(g) for g in state["new_kinds"] if g.get("members_x")]
        dropped = len(state["candidates"]) - len(candidates) + len(state["new_kinds"]) - len(new_kinds)
        if dropped:
            log.warning("%s: dropped %d saved candidates or groups of an older form", self.name, dropped)
        self._seq = state["seq"]
        self._candidates = deque(candidates)
        self._new_kinds = new_kinds
        self.skipped_no_descriptor = state["skipped_no_descriptor"]
        self.skipped_no_known = state.get("skipped_no_known", 0)
        self.set_known(self.known)
