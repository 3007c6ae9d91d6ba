"""What the line knows about anomaly kinds, for the new-kind rule (``alerts.NewAnomalyKind``).

Fitted from the store's inspections (``Store.descriptor_samples``), each labelled by:

* a review: ``rejected`` (a false alarm) -> the reference kind ``NORMAL_KIND``; ``confirmed`` or
  ``corrected`` with a label naming one kind -> that kind (labels of several kinds, "a, b", and
  the generic ones in ``GENERIC_LABELS`` name no kind); ``confirmed`` without one -> the verdict's kind;
* else the supervised model's verdict ``defect:<kind>`` -> that kind;
* else a passing part (decision normal, verdict ok) -> ``NORMAL_KIND``.

Unreviewed flagged parts the model could not name are what the rule judges, never known. A
kind counts once it has ``min_samples`` parts; nothing is known (the rule waits) until at least
``min_normals`` passing parts give the reference of normal, without which every flagged normal
would look new. Descriptors of another length (stored before today's ``DESCRIPTOR_FIELDS``) are
left out.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .alerts.novelty import NORMAL_KIND, KnownKinds
from .descriptors import is_current
from .store import DescriptorSample, Store

log = logging.getLogger(__name__)

GENERIC_LABELS = frozenset({"", "anomaly", "defect", "unknown_anomaly", NORMAL_KIND})


def sample_label(sample: DescriptorSample) -> str | None:
    """The kind a stored inspection counts under (see the module docstring), or None."""
    if sample.review_status == "rejected":
        return NORMAL_KIND
    verdict_kind = sample.verdict.removeprefix("defect:") if sample.verdict.startswith("defect:") else None
    if sample.review_status in ("confirmed", "corrected"):
        label = (sample.review_label or "").strip()
        if label and "," not in label and label not in GENERIC_LABELS:
            return label
        return verdict_kind if sample.review_status == "confirmed" and not label else None
    if verdict_kind is not None:
        return verdict_kind
    return NORMAL_KIND if sample.decision == "normal" and sample.verdict == "ok" else None


def fit_known_kinds(descriptors: Sequence[Sequence[float]], labels: Sequence[str], min_samples: int = 10,
                    min_normals: int = 50) -> KnownKinds | None:
    """``KnownKinds`` (per-kind spreads, ``NORMAL_KIND`` the reference) from labelled descriptors,
    keeping kinds with at least ``min_samples`` parts; None while ``NORMAL_KIND`` has fewer than
    ``min_normals``."""
    counts = Counter(labels)
    if counts[NORMAL_KIND] < min_normals:
        return None
    keep = [i for i, label in enumerate(labels)
            if counts[label] >= (min_normals if label == NORMAL_KIND else min_samples)]
    return KnownKinds.fit(np.asarray([descriptors[i] for i in keep], dtype=np.float64), [labels[i] for i in keep],
                          reference=(NORMAL_KIND,))


def labelled(samples: Iterable[DescriptorSample]) -> tuple[list[list[float]], list[str]]:
    """The samples with today's descriptor and a label, as (descriptors, labels)."""
    descriptors, labels = [], []
    for sample in samples:
        label = sample_label(sample)
        if label is not None and is_current(sample.descriptor):
            descriptors.append([float(v) for v in sample.descriptor])
            labels.append(label)
    return descriptors, labels


def known_kinds_from_store(store: Store, labelled_limit: int = 5000, passing: int = 500, min_samples: int = 10,
                           min_normals: int = 50) -> KnownKinds | None:
    """The known kinds as the line's store has them now (None: not enough to know normal yet)."""
    descriptors, labels = labelled(store.descriptor_samples(labelled_limit, passing))
    known = fit_known_kinds(descriptors, labels, min_samples, min_normals)
    if known is not None:
        log.debug("known kinds refitted: %s", dict(Counter(labels)))
    return known
