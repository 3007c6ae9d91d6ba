"""Batch inspection on Ray Data: ``aoiflow predict MODEL IMAGES --out OUT --engine ray``.

The image paths become a Ray dataset; a pool of actors, each holding one ONNX Runtime session of
the exported model (loaded once, from Ray's object store, so the model file need not be on every
machine), judges batches of them with the same ``Inspector`` as ``aoiflow predict`` (the same
reading, scoring graph and decision rule) and returns one row per image. The rows are written as
Parquet by Ray (``OUT/predictions.parquet/``, one file per block, typed columns) and, in input
order, as the same ``OUT/predictions.csv`` that one process writes. The images (and OUT, for the
anomaly-map PNGs) must be reachable at the same paths from every machine of the cluster.

``ray.init()`` joins the cluster named by RAY_ADDRESS, or one started on this machine with
``ray start``, or starts a local instance.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aoiflow.export import ExportError

PARQUET = "predictions.parquet"
FLOAT_COLUMNS = ("R", "L", "A", "threshold", "confidence")
TEXT_COLUMNS = ("path", "status", "reason", "decision", "map", "verdict", "kind", "regions", "worker")


@dataclass
class BatchSummary:
    """What a batch run found: counts, and the images that could not be scored and why."""

    scored: int = 0
    anomalous: int = 0
    not_scored: list[tuple[str, str]] = field(default_factory=list)


def exported_model(source: Path) -> Path:
    """The .onnx file to score with: ``source`` itself, or RUN/model.onnx of a run folder."""
    if source.is_dir():
        candidate = source / "model.onnx"
        if not candidate.is_file():
            raise ExportError(f"{source}: --engine ray scores with the exported model, and this run has none; "
                              f"export it first with `aoiflow export {source}` (writes {candidate})")
        return candidate
    if source.suffix != ".onnx":
        raise ExportError(f"{source}: --engine ray needs an exported .onnx model (or a run folder holding model.onnx)")
    if not source.is_file():
        raise ExportError(f"{source}: exported model not found")
    return source


class _Scorer:
    """One Ray actor: the exported model, loaded once, judging batches of image paths."""

    def __init__(self, model: bytes, threads: int, threshold: float | None, raw: bool, out: str,
                 write_maps: bool) -> None:
        from aoiflow.predict import Inspector

        self.file = tempfile.NamedTemporaryFile(suffix=".onnx")  # kept open: removed when the actor ends
        self.file.write(model)
        self.file.flush()
        self.inspector = Inspector.load(self.file.name, threshold, threads=threads)
        self.raw, self.out, self.write_maps = raw, Path(out), write_maps
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # in the Parquet rows: who judged what

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from aoiflow.predict import prediction_row, save_map

        rows: dict[str, list] = {k: [] for k in ("index", *TEXT_COLUMNS, *FLOAT_COLUMNS, "csv")}
        preds = self.inspector.predict_files(list(batch["path"]), batch_size=len(batch["path"]), raw=self.raw)
        for index, stem, pred in zip(batch["index"], batch["stem"], preds):
            map_name = save_map(self.inspector, pred, self.out, stem, self.raw) if self.write_maps else ""
            values = {"index": int(index), "path": str(pred.path), "status": pred.status, "reason": pred.reason,
                      "decision": pred.decision, "map": map_name, "verdict": pred.verdict, "kind": pred.kind or "",
                      "regions": json.dumps(pred.regions) if pred.regions else "", "R": pred.r, "L": pred.l,
                      "A": pred.a, "threshold": self.inspector.threshold,
                      "confidence": np.nan if pred.confidence is None else pred.confidence, "worker": self.worker,
                      "csv": json.dumps(prediction_row(pred, self.inspector.threshold, map_name))}
            for k, v in values.items():
                rows[k].append(v)
        return {k: np.asarray(v, dtype=np.float64 if k in FLOAT_COLUMNS else None) for k, v in rows.items()}


def _start_ray(progress: bool) -> bool:
    """Join (or start) Ray; True when this call started it and should stop it."""
    import ray

    import logging

    import ray.data  # configures its loggers on import: quieten them after

    if not progress:  # Ray Data reports every dataset it runs at INFO
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=progress)
    return True


def predict_with_ray(source: str | Path, target: str | Path, out_dir: str | Path, threshold: float | None = None,
                     threads: int = 1, workers: int | None = None, write_maps: bool = True, raw: bool = False,
                     overwrite: bool = False, batch_size: int = 16, progress: bool = True) -> BatchSummary:
    """Judge every image under ``target`` on Ray Data; writes OUT/predictions.csv (as ``aoiflow
    predict`` does), OUT/predictions.parquet/ and, unless ``write_maps`` is off, OUT/maps/.
    ``workers`` model copies (default: the cluster's CPUs / ``threads``), ``threads`` each."""
    import ray

    from aoiflow import data
    from aoiflow.fileio import output_stems
    from aoiflow.predict import Inspector, collect_inputs, prepare_output

    model = exported_model(Path(source))
    Inspector.load(model, threshold, threads=threads)  # a bad file fails here, named, before Ray starts
    paths = collect_inputs(target)
    out = Path(out_dir).resolve()
    prepare_output(out, ("predictions.csv", PARQUET, "maps"), overwrite, "predict")
    base = Path(target) if Path(target).is_dir() else Path(target).parent
    stems = output_stems(paths, base)
    started = _start_ray(progress)
    try:
        with _ordered(progress):
            workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
            items = [{"index": i, "path": str(p), "stem": stems[p]} for i, p in enumerate(paths)]
            scorer = (model.read_bytes(), threads, threshold, raw, str(out), write_maps)
            judged = _judge(items, scorer, workers, threads, batch_size)
            judged.drop_columns(["csv"]).write_parquet(str(out / PARQUET))
            summary = _write_csv(judged, out)
    finally:
        if started:
            ray.shutdown()
    if not summary.scored:
        first = summary.not_scored[0]
        raise data.DataLayoutError(f"{target}: none of the {len(summary.not_scored)} images could be scored "
                                   f"(e.g. {first[0]}: {first[1]}); see {out / 'predictions.csv'}")
    return summary


@contextmanager
def _ordered(progress: bool) -> Iterator[None]:
    """Ray Data settings for this run, restored after it."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.wait_for_min_actors_s
    ctx.execution_options.preserve_order = True  # rows leave in input order: the CSV needs no sort
    ctx.enable_progress_bars = progress
    # every model copy loaded before the first image is handed out: the work spreads over all of
    # them from the start, and a cluster too small for them fails with Ray's message
    ctx.wait_for_min_actors_s = 600
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved


def _judge(items: list[dict], scorer: tuple, workers: int, threads: int, batch_size: int):
    """The rows judged by a pool of ``workers`` _Scorer actors, kept in the object store: they
    are written twice (Parquet, CSV) and computed once."""
    import ray.data

    # enough blocks to keep every actor busy; about a thousand rows each on big inputs
    blocks = max(min(len(items), 4 * workers), len(items) // (64 * batch_size))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _Scorer, fn_constructor_args=scorer, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads).materialize()


def _write_csv(judged, out: Path) -> BatchSummary:
    """OUT/predictions.csv from the rows, in input order, and the summary."""
    from aoiflow.fileio import CsvAppender
    from aoiflow.predict import PREDICTION_FIELDS

    summary = BatchSummary()
    with CsvAppender(out / "predictions.csv", PREDICTION_FIELDS) as table:
        for batch in judged.select_columns(["path", "status", "reason", "decision", "csv"]).iter_batches(
                batch_format="numpy"):
            for path, status, reason, decision, row in zip(batch["path"], batch["status"], batch["reason"],
                                                           batch["decision"], batch["csv"]):
                table.add(json.loads(row))
                if status == "ok":
                    summary.scored += 1
                    summary.anomalous += decision == "anomalous"
                else:
                    summary.not_scored.append((str(path), str(reason)))
    return summary
