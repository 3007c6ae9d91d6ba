"""Judge a supervised defect-kind model on a labelled set (``aoiflow supervise test``). Never trains.

Every image is scored at the model size; its class map is the kept regions (``infer`` settings:
least area, least confidence), as the line would see it. Written to SUP/eval (or ``out``):
metrics.json, predictions.csv, confusion.png, examples.png and report.html.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aoiflow.evaluate import _json_ready
from aoiflow.fileio import atomic_write_text, write_csv
from aoiflow.supervised import report
from aoiflow.supervised.dataset import load_supervised_data, read_label_set
from aoiflow.supervised.metrics import (GOOD, accuracy, class_scores, image_auroc, image_kind, kind_confusion,
                                        mean_score, pixel_confusion, precision_recall, region_counts)
from aoiflow.supervised.model import SupervisedError, SupervisedModel
from aoiflow.supervised.verdict import class_regions, filtered_class_map, region_dicts

PREDICTION_FIELDS = ["path", "true_kind", "predicted_kind", "score", "regions"]
MAX_EXAMPLES = 8


@dataclass(frozen=True)
class ImageOutcome:
    """One judged test image."""

    path: Path
    true_kind: str         # 'good' or the kind with the most truth pixels
    predicted_kind: str    # 'good' (no region) or the kind with the most region pixels
    score: float           # the largest defect probability (1 - background) of any pixel
    regions: list[dict]    # in the original image's pixels


def summarise(confusion: np.ndarray, regions: np.ndarray, outcomes: Sequence[ImageOutcome],
              class_names: Sequence[str]) -> dict:
    """The metrics from the accumulated pixel ``confusion`` (n, n), region counts (n, 3) and the
    per-image outcomes: per-class pixel IoU / F1, region precision / recall at IoU >= 0.5 per
    class, image accuracy (defective = any region predicted), image AUROC of the score, the kind
    confusion matrix over images ('good' first) and kind accuracy."""
    scores = class_scores(confusion, class_names)
    truth = [int(o.true_kind != GOOD) for o in outcomes]
    predicted = [int(o.predicted_kind != GOOD) for o in outcomes]
    kinds = [GOOD, *[n for n in class_names if n != GOOD]]
    matrix = kind_confusion([o.true_kind for o in outcomes], [o.predicted_kind for o in outcomes], kinds)
    return {
        "pixel": {"per_class": scores, "mean_iou": mean_score(scores, "iou"), "mean_f1": mean_score(scores, "f1")},
        "regions_iou_0.5": {"all": precision_recall(regions[1:].sum(0)),
                            "per_class": {n: precision_recall(regions[k]) for k, n in enumerate(class_names, 1)}},
        "image": {"accuracy": accuracy(truth, predicted), "auroc": image_auroc(truth, [o.score for o in outcomes]),
                  "kind_accuracy": float(np.trace(matrix) / matrix.sum()) if matrix.sum() else None},
        "confusion": {"kinds": kinds, "matrix": matrix.tolist()},
        "counts": {"images": len(outcomes), "with_defects": int(sum(truth)),
                   "without_defects": len(outcomes) - int(sum(truth))},
    }


def evaluate_supervised(sup: str | Path, data_path: str | Path, out: str | Path | None = None, *,
                        images: str | Path | None = None, format: str | None = None,
                        include_train_good: bool = False, progress: bool = True, threads: int | None = None,
                        batch_size: int = 16) -> dict:
    """Score the label set ``data_path`` (any form ``read_labels`` reads, e.g. an MVTec folder)
    with the model in ``sup`` and write the evaluation to ``out`` (default SUP/eval); returns the
    metrics. Classes of the set the model does not know are kept as truth (their pixels count as
    missed) and named in a warning."""
    model = SupervisedModel.load(sup)
    torch.set_num_threads(threads or model.config.train.threads)
    label_set = read_label_set(data_path, images, format=format, include_train_good=include_train_good,
                               need_defects=False)
    test = load_supervised_data(label_set, model.channels, model.image_size, progress, model.class_names)
    if len(test) == 0:
        raise SupervisedError(f"{data_path}: none of its images could be read")
    names = test.class_names
    unknown = names[len(model.class_names):]
    if unknown:
        warnings.warn(f"{data_path}: class(es) {', '.join(unknown)} are unknown to the model in {sup}; their pixels "
                      f"count as missed", stacklevel=2)
    n = len(names) + 1
    ic = model.config.infer
    confusion, regions = np.zeros((n, n), np.int64), np.zeros((n, 3), np.int64)
    outcomes: list[ImageOutcome] = []
    examples: dict[str, report.ExampleRow] = {}
    t0 = time.perf_counter()
    for start in range(0, len(test), batch_size):
        index = list(range(start, min(start + batch_size, len(test))))
        x, y = test.batch(index)
        probs = model.infer(x).numpy()
        for j, i in enumerate(index):
            labels, found = class_regions(probs[j], ic.min_region_area, ic.min_confidence)
            pred, truth = filtered_class_map(labels, found), y[j].numpy()
            confusion += pixel_confusion(pred, truth, n)
            regions += region_counts(pred, truth, n)
            outcome = ImageOutcome(test.paths[i], image_kind(truth, names), image_kind(pred, names),
                                   float((1.0 - probs[j][0]).max()),
                                   region_dicts(found, names, labels, test.original_sizes[i], polygons=False))
            outcomes.append(outcome)
            if outcome.true_kind not in examples and len(examples) < MAX_EXAMPLES:
                examples[outcome.true_kind] = report.ExampleRow(
                    f"{outcome.true_kind}: {test.paths[i].name}", x[j].permute(1, 2, 0).numpy(), truth, pred,
                    1.0 - probs[j][0])
    ms = (time.perf_counter() - t0) * 1000 / len(test)
    metrics = summarise(confusion, regions, outcomes, names)
    metrics["counts"]["skipped"] = len(test.skipped)
    metrics.update(sup=str(sup), data=str(data_path), model_version=model.version, class_names=names,
                   unknown_classes=unknown, image_size=model.image_size,
                   settings={"min_region_area": ic.min_region_area, "min_confidence": ic.min_confidence},
                   skipped=[{"path": str(p), "reason": why} for p, why in test.skipped], ms_per_image=ms)
    metrics = _json_ready(metrics)
    where = Path(out) if out is not None else Path(sup) / "eval"
    where.mkdir(parents=True, exist_ok=True)
    atomic_write_text(where / "metrics.json", json.dumps(metrics, indent=2))
    write_csv(where / "predictions.csv", PREDICTION_FIELDS,
              [[o.path, o.true_kind, o.predicted_kind, f"{o.score:.6g}", json.dumps(o.regions)] for o in outcomes])
    report.confusion_plot(np.array(metrics["confusion"]["matrix"]), metrics["confusion"]["kinds"],
                          where / "confusion.png")
    report.examples_plot(list(examples.values()), names, where / "examples.png")
    report.html_report(where, metrics)
    return metrics
