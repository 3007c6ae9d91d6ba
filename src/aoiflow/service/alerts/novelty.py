"""New anomaly kinds: flagged parts that fit no known kind and gather into a group.

The rule, in standardised descriptor space (each feature centred and scaled by the known
samples' mean and sd, scikit-learn's ``StandardScaler``):
  * a kind is a centroid and a radius; the radius is the ``quantile`` (default 0.99) of the
    kind's own samples' distances to their centroid, so about 1 % of a known kind's parts fall
    outside it;
  * a flagged part *fits* a kind within its radius; it is *novel* only when it lies beyond
    ``margin`` (default 1.5) times the radius of every kind. Parts in between are left alone:
    they are the tails of known kinds, which would otherwise gather into false "new" groups;
  * novel parts within the last ``window`` inspections (and/or ``window_s`` seconds) are grouped
    with DBSCAN (``eps`` = the 0.99 quantile of distances between two samples of the same known
    kind, ``min_samples`` = k): a group as tight as a known kind is found with its k-th member.
    Each group raises one alert and then becomes a provisional kind, so later parts of it are
    quiet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist
from sklearn.cluster import DBSCAN
from sklearn.preprocessing import StandardScaler

from .events import Alert, Observation
from .rules import Rule, describe_ref, key_ref, obs_ref

_MAX_PER_KIND = 500  # samples per kind used for the pairwise-distance quantile (pdist is quadratic)


@dataclass
class KnownKinds:
    """Known anomaly kinds as centroids and radii in standardised descriptor space.

    ``centroids`` (K, D) and ``radii`` (K,) are standardised; ``mean``/``scale`` (D,) standardise
    a raw descriptor; ``eps`` is the grouping radius for new kinds, in the same units.
    """

    names: list[str]
    centroids: np.ndarray
    radii: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    eps: float

    def __post_init__(self) -> None:
        self.centroids = np.asarray(self.centroids, dtype=np.float64).reshape(len(self.names), -1)
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(len(self.names))
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.scale.shape or (len(self.names) and self.centroids.shape[1] != self.dim):
            raise ValueError(f"centroids {self.centroids.shape}, mean {self.mean.shape} and scale "
                             f"{self.scale.shape} must share the descriptor length")
        if np.any(self.scale <= 0) or self.eps <= 0 or np.any(self.radii <= 0):
            raise ValueError("scale, radii and eps must be positive")

    @property
    def dim(self) -> int:
        """Descriptor length D."""
        return self.mean.shape[0]

    @classmethod
    def fit(cls, descriptors: np.ndarray, labels: Sequence[str], quantile: float = 0.99,
            group_quantile: float = 0.99, seed: int = 0) -> KnownKinds:
        """From labelled descriptors (N, D): per-kind centroids, radii and the grouping eps."""
        x = np.asarray(descriptors, dtype=np.float64)
        labels = np.asarray(labels)
        if x.ndim != 2 or x.shape[0] != labels.shape[0]:
            raise ValueError(f"need descriptors (N, D) and N labels, got {x.shape} and {labels.shape}")
        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        names = sorted(set(labels.tolist()))
        rng = np.random.default_rng(seed)
        centroids, radii, pairs = [], [], []
        for name in names:
            zk = z[labels == name]
            if len(zk) < 2:
                raise ValueError(f"kind {name!r} needs at least 2 samples, got {len(zk)}")
            centroids.append(zk.mean(axis=0))
            radii.append(np.quantile(np.linalg.norm(zk - centroids[-1], axis=1), quantile))
            if len(zk) > _MAX_PER_KIND:
                zk = zk[rng.choice(len(zk), _MAX_PER_KIND, replace=False)]
            pairs.append(pdist(zk))
        eps = float(np.quantile(np.concatenate(pairs), group_quantile))
        return cls(names, np.array(centroids), np.array(radii), scaler.mean_, scaler.scale_, eps)

    @classmethod
    def from_centroids(cls, centroids: Mapping[str, Sequence[float]], radii: Mapping[str, float],
                       mean: Sequence[float] | None = None, scale: Sequence[float] | None = None,
                       eps: float | None = None) -> KnownKinds:
        """From raw-space centroids and radii in standardised units (raw units without mean/scale).

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
        """Raw (D,) descriptor -> standardised (D,)."""
        x = np.asarray(descriptor, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"descriptor has {x.shape[0]} features, the known kinds have {self.dim}")
        return (x - self.mean) / self.scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"names": list(self.names), "centroids": self.centroids.tolist(), "radii": self.radii.tolist(),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "eps": self.eps}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KnownKinds:
        """Inverse of ``to_dict``."""
        return cls(list(d["names"]), np.asarray(d["centroids"]), np.asarray(d["radii"]),
                   np.asarray(d["mean"]), np.asarray(d["scale"]), float(d["eps"]))


class NewAnomalyKind(Rule):
    """Alert when at least ``k`` novel flagged parts gather into one group (see the module doc).

    Considers parts with decision "anomalous" and verdict "anomaly" or "unknown_anomaly" that carry
    a descriptor; "defect:<kind>" verdicts were recognised by the defect-kind model and are skipped.
    ``window`` counts every observation; ``window_s`` (optional) also bounds the group's age.
    """

    def __init__(self, known: KnownKinds, k: int = 5, window: int = 1000, window_s: float | None = None,
                 margin: float = 1.5, name: str = "new_kind") -> None:
        if k < 2 or window < k or margin < 1:
            raise ValueError("need k >= 2, window >= k and margin >= 1")
        self.known, self.k, self.window, self.window_s, self.margin, self.name = (
            known, k, window, window_s, margin, name)
        self._seq = 0
        self._candidates: deque[dict[str, Any]] = deque()
        self._new_kinds: list[dict[str, Any]] = []
        self.skipped_no_descriptor = 0

    def observe(self, obs: Observation) -> list[Alert]:
        self._seq += 1
        self._expire(obs.time)
        if not (obs.input_ok and obs.flagged and obs.verdict in ("anomaly", "unknown_anomaly")):
            return []
        if obs.descriptor is None:
            self.skipped_no_descriptor += 1
            return []
        z = self.known.standardise(obs.descriptor)
        ratios = self._ratios(z)
        if ratios.size and ratios.min() <= self.margin:  # fits a kind, or too close to one to call new
            return []
        self._candidates.append({"seq": self._seq, "z": z.tolist(), **obs_ref(obs)})
        return self._group(obs)

    def _kinds(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        names = list(self.known.names) + [f"new:{g['cluster_id']}" for g in self._new_kinds]
        cents = [self.known.centroids] + [np.asarray(g["centroid"])[None] for g in self._new_kinds]
        radii = [self.known.radii] + [np.array([g["radius"]]) for g in self._new_kinds]
        return names, np.concatenate(cents).reshape(len(names), self.known.dim), np.concatenate(radii)

    def _ratios(self, z: np.ndarray) -> np.ndarray:
        """Distance to each kind (known and provisional) over its radius."""
        _, cents, radii = self._kinds()
        return np.linalg.norm(cents - z, axis=1) / radii if len(radii) else np.empty(0)

    def _expire(self, now: datetime) -> None:
        oldest_seq = self._seq - self.window
        oldest_time = None if self.window_s is None else now - timedelta(seconds=self.window_s)
        while self._candidates and (self._candidates[0]["seq"] <= oldest_seq or (
                oldest_time is not None and datetime.fromisoformat(self._candidates[0]["time"]) < oldest_time)):
            self._candidates.popleft()

    def _group(self, obs: Observation) -> list[Alert]:
        if len(self._candidates) < self.k:
            return []
        z = np.array([c["z"] for c in self._candidates])
        labels = DBSCAN(eps=self.known.eps, min_samples=self.k).fit_predict(z)
        alerts = []
        for label in sorted(set(labels.tolist()) - {-1}):
            members = [c for c, lab in zip(self._candidates, labels) if lab == label]
            alerts.append(self._new_kind(members, z[labels == label], obs))
        if alerts:
            self._candidates = deque(c for c, lab in zip(self._candidates, labels) if lab == -1)
        return alerts

    def _new_kind(self, members: list[dict[str, Any]], z: np.ndarray, obs: Observation) -> Alert:
        centroid = z.mean(axis=0)
        spread = float(np.linalg.norm(z - centroid, axis=1).max())
        typical = float(np.median(self.known.radii)) if len(self.known.radii) else self.known.eps
        cluster_id = key_ref(members[0])
        ratios = np.linalg.norm(self.known.centroids - centroid, axis=1) / self.known.radii
        nearest = (self.known.names[int(ratios.argmin())], float(ratios.min())) if ratios.size else (None, None)
        self._new_kinds.append({"cluster_id": cluster_id, "centroid": centroid.tolist(),
                                "radius": max(spread, typical), "size": len(members)})
        ids = [m["id"] for m in members if m["id"] is not None]
        near = f"; nearest known kind '{nearest[0]}' at {nearest[1]:.1f} times its radius" if nearest[0] else ""
        message = (f"Possible new kind of anomaly: {len(members)} flagged parts within the last {self.window} "
                   f"inspections look alike and fit none of the known kinds ({', '.join(self.known.names) or 'none'})"
                   f"{near}. First seen at {describe_ref(members[0])}. Review them and label the kind.")
        details = {"cluster_id": cluster_id, "size": len(members), "nearest_kind": nearest[0],
                   "nearest_ratio": nearest[1], "eps": self.known.eps, "k": self.k, "window": self.window,
                   "first": {"id": members[0]["id"], "time": members[0]["time"]}}
        return Alert(key=f"new_kind:{cluster_id}", rule=self.name, kind=None, severity="warning",
                     message=message, time=obs.time, evidence=ids, details=details)

    def state_dict(self) -> dict[str, Any]:
        return {"seq": self._seq, "candidates": [dict(c) for c in self._candidates],
                "new_kinds": [dict(g) for g in self._new_kinds], "skipped_no_descriptor": self.skipped_no_descriptor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seq = state["seq"]
        self._candidates = deque(dict(c) for c in state["candidates"])
        self._new_kinds = [dict(g) for g in state["new_kinds"]]
        self.skipped_no_descriptor = state["skipped_no_descriptor"]
