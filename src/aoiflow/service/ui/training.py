"""A supervised training job started from the operator pages: the reviewed labels as a training
set, ``fit_supervised`` on a background thread, then ``evaluate_supervised`` for its test report.

One job runs at a time (it shares the CPU with the line's inspections). Progress is read from
what training writes anyway (SUP/history.csv, one row per validation), so training itself needs
no hook. A job's folder, under DATA_DIR/training/<job id>/:

    set/        images/, masks/ (class indices) + masks/classes.txt: the reviewed labels
    sup/        the model (``aoiflow supervise train`` output), sup/eval/ its test report

The report tests the model on the same reviewed set it learned from (most of it; validation took
a share): until a held-out reviewed set exists, read it as an upper bound, as the page says.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATES = ("queued", "exporting", "training", "testing", "done", "failed")


class JobRunning(RuntimeError):
    """Another training job is still running."""


@dataclass
class TrainingJob:
    id: str
    steps: int
    image_size: int
    by: str | None
    folder: Path
    state: str = "queued"
    step: int = 0
    message: str = ""
    images: int = 0
    classes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None

    @property
    def sup(self) -> Path:
        return self.folder / "sup"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def view(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"] = str(self.folder)
        d["sup"] = str(self.sup)
        if self.state == "training":
            d["step"] = max(self.step, _history_step(self.sup / "history.csv"))
        d["progress"] = _progress(self.state, d["step"], self.steps)
        d["report_url"] = f"/api/v1/training/{self.id}/report/report.html" if self.state == "done" else None
        return d


def _history_step(path: Path) -> int:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return int(float(rows[-1]["step"])) if rows else 0
    except (OSError, KeyError, ValueError):
        return 0


def _progress(state: str, step: int, steps: int) -> float:
    """0..1 over the whole job: export 5 %, training 85 %, testing 10 %."""
    if state == "done":
        return 1.0
    if state in ("queued", "failed"):
        return 0.0
    if state == "exporting":
        return 0.02
    if state == "training":
        return 0.05 + 0.85 * min(step / max(steps, 1), 1.0)
    return 0.92


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    pixel, image = metrics.get("pixel", {}), metrics.get("image", {})
    regions = metrics.get("regions_iou_0.5", {}).get("all", {})
    return {"pixel_mean_iou": pixel.get("mean_iou"), "image_accuracy": image.get("accuracy"),
            "kind_accuracy": image.get("kind_accuracy"), "region_precision": regions.get("precision"),
            "region_recall": regions.get("recall"), "images": metrics.get("counts", {}).get("images")}


class TrainingJobs:
    """Starts and tracks training jobs. ``write_set(folder) -> (images, classes)`` writes the
    reviewed labels as a mask training set into ``folder`` (images/ and masks/)."""

    def __init__(self, root: Path, write_set: Callable[[Path], tuple[int, list[str]]], threads: int = 2) -> None:
        self.root = Path(root)
        self.write_set = write_set
        self.threads = threads
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    def list(self) -> list[TrainingJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def get(self, job_id: str) -> TrainingJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, steps: int, image_size: int, by: str | None = None) -> TrainingJob:
        with self._lock:
            running = [j for j in self._jobs.values() if not j.finished]
            if running:
                raise JobRunning(f"training job {running[0].id} is still {running[0].state}; one job runs at a time")
            job_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
            job = TrainingJob(job_id, steps, image_size, by, self.root / job_id)
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"aoiflow-train-{job_id}", daemon=True).start()
        return job

    def _run(self, job: TrainingJob) -> None:
        from aoiflow.supervised.config import build_supervised_config
        from aoiflow.supervised.evaluate import evaluate_supervised
        from aoiflow.supervised.train import fit_supervised

        t0 = time.perf_counter()
        try:
            job.state, job.message = "exporting", "writing the reviewed labels as a training set"
            job.images, job.classes = self.write_set(job.folder / "set")
            masks, images = job.folder / "set" / "masks", job.folder / "set" / "images"
            job.state, job.message = "training", f"training on {job.images} reviewed images ({', '.join(job.classes)})"
            config = build_supervised_config(overrides={
                "model": {"image_size": job.image_size},
                "train": {"steps": job.steps, "eval_every": max(1, job.steps // 20), "threads": self.threads,
                          "batch_size": max(1, min(8, job.images))}})
            result = fit_supervised(masks, job.sup, config, images=images, progress=False)
            job.step = result.steps_done
            job.state, job.message = "testing", "testing the model on the reviewed set"
            metrics = evaluate_supervised(job.sup, masks, images=images, progress=False, threads=self.threads)
            job.metrics = _headline(metrics)
            job.state = "done"
            job.message = (f"done in {time.perf_counter() - t0:.0f} s; best validation mIoU "
                           f"{'-' if result.best_miou is None else f'{result.best_miou:.3f}'}; tested on the "
                           f"reviewed set it learned from (an upper bound until a held-out set exists)")
        except Exception as exc:  # shown on the page; the line keeps running
            log.exception("training job %s failed", job.id)
            job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = datetime.now(UTC).isoformat()
