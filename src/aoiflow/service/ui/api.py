"""The API the operator pages use beyond the line's own (all under /api/v1, in the OpenAPI docs):

    GET  /review/queue                      flagged, unreviewed inspections, most uncertain first
    GET  /inspections/{id}/outlines         image size, pre-labels as outlines, reviewed regions
    GET  /inspections/{id}/actions          the review actions kept for it, oldest first
    POST /inspections/{id}/actions          {action, payload, by}: keep one review action (now)
    POST /inspections/{id}/labels           {decision: accept|normal, regions, by}: the review's result
    GET  /labels/classes                    kinds known so far (for the class field)
    GET  /labels/summary                    reviews by status, regions by kind, queue length
    GET  /labels/export?format=...          reviewed labels as a zip: coco, yolo, labelme or mask
    POST /training                          {steps, image_size, by}: train the defect-kind model
    GET  /training  /training/{job}         jobs and their progress
    GET  /training/{job}/report/{file}      the finished job's test report (report.html + plots)
    GET  /labelstudio/tasks                 review tasks with the pre-labels as predictions
    GET  /labelstudio/config.xml            the labelling config those tasks are made for
    POST /labelstudio/import                a Label Studio JSON export: its annotations become reviews
    GET  /models/catalog                    registered models with their metrics, trained jobs

Reads and writes take the same tokens as the rest of the API (the dependencies are passed in).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from ..pipeline import Line
from ..schemas import verdict_json
from ..store import ReviewActionRecord
from . import labels as lab
from . import labelstudio as ls
from .training import JobRunning, TrainingJobs

MAX_PAYLOAD = 20_000  # characters of an action's JSON payload
_REPORT_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.(html|png|json|csv)$")
_state_lock = threading.Lock()


class ActionIn(BaseModel):
    action: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="e.g. open, delete_region, move_vertex, "
                                                                        "add_box, rename_region")
    payload: dict[str, Any] = Field(default_factory=dict)
    by: str | None = Field(None, max_length=200)


class LabelsIn(BaseModel):
    decision: Literal["accept", "normal"] = Field(description="accept: the regions as sent are the labels; "
                                                              "normal: a false alarm, no region")
    regions: list[dict[str, Any]] = Field(default_factory=list, description="[{kind, polygon: [[x, y], ...]}]")
    by: str | None = Field(None, max_length=200)


class TrainIn(BaseModel):
    steps: int = Field(300, ge=1, le=100_000)
    image_size: Literal[32, 64, 128, 256] = 64
    by: str | None = Field(None, max_length=200)


def _line(request: Request) -> Line:
    return request.app.state.line


def _record(request: Request, inspection_id: int) -> Any:
    record = _line(request).store.get().get_inspection(inspection_id)
    if record is None:
        raise HTTPException(404, f"no inspection {inspection_id}")
    return record


def image_size_of(request: Request, record: Any) -> tuple[int, int] | None:
    """(width, height) of an inspection's image, remembered per path; None when it is gone."""
    cache: dict[str, tuple[int, int]] | None = getattr(request.app.state, "ui_sizes", None)
    if cache is None:
        request.app.state.ui_sizes = cache = {}
    if record.image_path in cache:
        return cache[record.image_path]
    path = _line(request).files.resolve(record.image_path)
    if path is None:
        return None
    try:
        size = lab.image_size(path)
    except OSError:
        return None
    with _state_lock:
        if len(cache) > 20_000:
            cache.clear()
        cache[record.image_path] = size
    return size


def _jobs(request: Request) -> TrainingJobs:
    state = request.app.state
    with _state_lock:
        if getattr(state, "training_jobs", None) is None:
            line = _line(request)

            def write_set(folder: Path) -> tuple[int, list[str]]:
                records = line.store.get().reviewed_inspections()
                items = lab.collect(records, line.files.resolve, folder / "images")
                return len(items), lab.write_label_set(items, "mask", folder)

            state.training_jobs = TrainingJobs(line.files.root / "training", write_set, threads=line.settings.threads)
        return state.training_jobs


def _read_metrics(path: str | Path) -> dict[str, Any] | None:
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    target = folder / "eval" / "metrics.json"
    try:
        return json.loads(target.read_text())
    except (OSError, ValueError):
        return None


def headline_metrics(kind: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The few numbers a models table shows, from a run's (or a supervised model's) eval/metrics.json."""
    if not metrics:
        return {}
    if kind == "supervised":
        pixel, image = metrics.get("pixel", {}), metrics.get("image", {})
        return {"pixel mIoU": pixel.get("mean_iou"), "image accuracy": image.get("accuracy"),
                "kind accuracy": image.get("kind_accuracy"), "images": metrics.get("counts", {}).get("images")}
    loc = metrics.get("localisation", {})
    return {"image AUROC": metrics.get("image_auroc"), "pixel AUROC": metrics.get("pixel_auroc"),
            "F1 at threshold": metrics.get("f1_at_threshold"), "recall at threshold": metrics.get("recall_at_threshold"),
            "false alarms at threshold": metrics.get("false_positive_rate_at_threshold"),
            "PRO 0.3": loc.get("pro_30"), "threshold": metrics.get("threshold")}


def ui_api(read: Any, write: Any) -> APIRouter:
    """The router; ``read`` and ``write`` are the app's access dependencies."""
    api = APIRouter(prefix="/api/v1")
    reads, writes = [Depends(read)], [Depends(write)]

    # -- review ---------------------------------------------------------------------------

    @api.get("/review/queue", tags=["review"], dependencies=reads)
    def review_queue(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        """Flagged (anomalous), unreviewed inspections, the most uncertain (smallest |A - threshold|)
        first, each with its image size and its pre-labels as editable outlines."""
        store = _line(request).store.get()
        items = []
        for r in store.review_queue(limit, offset):
            size = image_size_of(request, r)
            items.append({**verdict_json(r, r.id), "uncertainty": abs(r.a - r.threshold),
                          "width": size[0] if size else None, "height": size[1] if size else None,
                          "prelabels": lab.editable_prelabels(r.regions, *size) if size else []})
        return {"items": items, "total": store.count_review_queue(), "limit": limit, "offset": offset}

    @api.get("/inspections/{inspection_id}/outlines", tags=["review"], dependencies=reads)
    def outlines(request: Request, inspection_id: int) -> dict[str, Any]:
        """The image's size, the pre-labels as editable outlines, and the reviewed regions (None
        before a review with regions)."""
        record = _record(request, inspection_id)
        size = image_size_of(request, record)
        if size is None:
            raise HTTPException(404, f"inspection {inspection_id} has no image file")
        return {"width": size[0], "height": size[1], "prelabels": lab.editable_prelabels(record.regions, *size),
                "reviewed": record.reviewed_regions}

    @api.get("/inspections/{inspection_id}/actions", tags=["review"], dependencies=reads)
    def actions(request: Request, inspection_id: int) -> dict[str, Any]:
        from dataclasses import asdict

        from ..alerts import json_safe

        rows = _line(request).store.get().list_review_actions(inspection_id)
        return {"items": [json_safe(asdict(a)) for a in rows]}

    @api.post("/inspections/{inspection_id}/actions", tags=["review"], dependencies=writes, status_code=201)
    def add_action(request: Request, inspection_id: int, body: ActionIn) -> dict[str, Any]:
        """Keep one review action with the time it arrived."""
        if len(json.dumps(body.payload)) > MAX_PAYLOAD:
            raise HTTPException(422, f"an action's payload is at most {MAX_PAYLOAD} characters of JSON")
        record = ReviewActionRecord(inspection_id=inspection_id, action=body.action, payload=body.payload, by=body.by)
        action_id = _line(request).store.get().add_review_action(record)
        if action_id is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return {"id": action_id, "at": record.at.isoformat()}

    @api.post("/inspections/{inspection_id}/labels", tags=["review"], dependencies=writes)
    def save_labels(request: Request, inspection_id: int, body: LabelsIn) -> dict[str, Any]:
        """The end of a review: ``accept`` keeps the regions sent (confirmed when they are the
        pre-labels unchanged, corrected otherwise, rejected when none is left); ``normal`` marks
        the part a false alarm (rejected, no region)."""
        record = _record(request, inspection_id)
        size = image_size_of(request, record)
        if size is None:
            raise HTTPException(409, f"inspection {inspection_id} has no image file to label")
        try:
            regions = [] if body.decision == "normal" else lab.clean_regions(body.regions, *size)
        except lab.LabelProblem as exc:
            raise HTTPException(422, str(exc)) from None
        status = lab.review_status(lab.editable_prelabels(record.regions, *size), regions)
        kinds = sorted({r["kind"] for r in regions})
        action = ReviewActionRecord(inspection_id=inspection_id, action="mark_normal" if body.decision == "normal"
                                    else "accept", payload={"status": status, "regions": len(regions)}, by=body.by)
        store = _line(request).store.get()
        store.save_review(inspection_id, status, regions, action, label=", ".join(kinds) or None, by=body.by)
        return verdict_json(store.get_inspection(inspection_id), inspection_id)

    # -- labels ---------------------------------------------------------------------------

    @api.get("/labels/classes", tags=["labels"], dependencies=reads)
    def classes(request: Request) -> dict[str, list[str]]:
        """Kinds known so far: in reviews, in verdicts, and the usual 'defect'."""
        store = _line(request).store.get()
        kinds: dict[str, None] = {}
        for r in store.reviewed_inspections(limit=5000):
            for region in r.reviewed_regions or []:
                kinds.setdefault(region.get("kind", ""))
        for r in store.query_inspections(limit=500):
            for region in r.regions or []:
                kinds.setdefault(region.get("kind") or "")
            if r.kind:
                kinds.setdefault(r.kind)
        kinds.setdefault("defect")
        return {"classes": sorted(k for k in kinds if k)}

    @api.get("/labels/summary", tags=["labels"], dependencies=reads)
    def summary(request: Request) -> dict[str, Any]:
        store = _line(request).store.get()
        statuses: dict[str, int] = {s: 0 for s in ("confirmed", "corrected", "rejected")}
        kinds: dict[str, int] = {}
        for r in store.reviewed_inspections():
            statuses[r.review_status] = statuses.get(r.review_status, 0) + 1
            for region in r.reviewed_regions or []:
                kinds[region.get("kind", "?")] = kinds.get(region.get("kind", "?"), 0) + 1
        return {"reviews": statuses, "reviewed": sum(statuses.values()), "regions_by_kind": kinds,
                "queue": store.count_review_queue(), "formats": list(lab.EXPORT_FORMATS)}

    @api.get("/labels/export", tags=["labels"], dependencies=reads, response_class=FileResponse,
             responses={200: {"content": {"application/zip": {}}}})
    def export(request: Request, format: Literal["coco", "yolo", "labelme", "mask"] = "coco") -> FileResponse:
        """The reviewed labels as a zip with the images: COCO (annotations.json), YOLO boxes,
        LabelMe polygons, or class-index masks with classes.txt (a training set for
        ``aoiflow supervise train``). Parts reviewed normal come as images without regions."""
        line = _line(request)
        records = line.store.get().reviewed_inspections()
        work = Path(tempfile.mkdtemp(prefix="export-", dir=line.files.root / "tmp"))
        try:
            folder = work / "labels"
            items = lab.collect(records, line.files.resolve, folder / "images")
            lab.write_label_set(items, format, folder)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            target = lab.zip_folder(folder, work / f"aoiflow-labels-{format}-{stamp}.zip")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return FileResponse(target, media_type="application/zip", filename=target.name,
                            background=BackgroundTask(shutil.rmtree, work, True))

    # -- training ---------------------------------------------------------------------------

    @api.post("/training", tags=["labels"], dependencies=writes, status_code=202)
    def start_training(request: Request, body: TrainIn) -> dict[str, Any]:
        """Train the defect-kind model on the reviewed labels in the background (one job at a time)."""
        try:
            job = _jobs(request).start(body.steps, body.image_size, body.by)
        except JobRunning as exc:
            raise HTTPException(409, str(exc)) from None
        return job.view()

    @api.get("/training", tags=["labels"], dependencies=reads)
    def training_jobs(request: Request) -> dict[str, Any]:
        return {"items": [j.view() for j in _jobs(request).list()]}

    @api.get("/training/{job_id}", tags=["labels"], dependencies=reads)
    def training_job(request: Request, job_id: str) -> dict[str, Any]:
        job = _jobs(request).get(job_id)
        if job is None:
            raise HTTPException(404, f"no training job {job_id}")
        return job.view()

    @api.get("/training/{job_id}/report/{name}", tags=["labels"], dependencies=reads)
    def training_report(request: Request, job_id: str, name: str) -> FileResponse:
        job = _jobs(request).get(job_id)
        path = job.sup / "eval" / name if job is not None and _REPORT_FILE.match(name) else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no report file {name} for training job {job_id}")
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})

    # -- Label Studio -------------------------------------------------------------------------

    @api.get("/labelstudio/tasks", tags=["labels"], dependencies=reads)
    def labelstudio_tasks(request: Request, scope: Literal["queue", "flagged"] = "queue",
                          limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> Response:
        """Review tasks for Label Studio (JSON import), the pre-labels as predictions in percent
        coordinates: the review queue (most uncertain first), or every flagged inspection."""
        from ..store import InspectionFilter

        store = _line(request).store.get()
        records = (store.review_queue(limit) if scope == "queue"
                   else store.query_inspections(InspectionFilter(decision="anomalous"), limit=limit))
        base = str(request.base_url).rstrip("/")
        tasks = []
        for r in records:
            size = image_size_of(request, r)
            if size is None:
                continue
            prelabels = lab.editable_prelabels(r.regions, *size)
            tasks.append(ls.task(verdict_json(r, r.id), prelabels, *size, f"{base}/api/v1/inspections/{r.id}/image"))
        return JSONResponse(tasks, headers={"Content-Disposition": 'attachment; filename="aoiflow-labelstudio-tasks.json"'})

    @api.get("/labelstudio/config.xml", tags=["labels"], dependencies=reads)
    def labelstudio_config(request: Request) -> Response:
        return Response(ls.label_config(classes(request)["classes"] + ["anomaly"]), media_type="application/xml")

    @api.post("/labelstudio/import", tags=["labels"], dependencies=writes)
    async def labelstudio_import(request: Request) -> dict[str, Any]:
        """A Label Studio JSON export: each task's last annotation becomes its inspection's review
        (no region: normal; the pre-labels unchanged: confirmed; else corrected)."""
        import asyncio

        try:
            doc = json.loads(await request.body())
        except ValueError as exc:
            raise HTTPException(422, f"not JSON: {exc}") from None
        return await asyncio.to_thread(_import, request, doc)

    def _import(request: Request, doc: Any) -> dict[str, Any]:
        store = _line(request).store.get()
        records: dict[int, Any] = {}

        def size_of(iid: int) -> tuple[int, int] | None:
            records[iid] = records.get(iid) or store.get_inspection(iid)
            return image_size_of(request, records[iid]) if records[iid] is not None else None

        try:
            reviews, problems = ls.read_export(doc, size_of)
        except lab.LabelProblem as exc:
            raise HTTPException(422, str(exc)) from None
        counts = {"confirmed": 0, "corrected": 0, "rejected": 0}
        for review in reviews:
            record = records[review.inspection_id]
            size = image_size_of(request, record)
            status = lab.review_status(lab.editable_prelabels(record.regions, *size), review.regions)
            action = ReviewActionRecord(inspection_id=review.inspection_id, action="import_labelstudio",
                                        payload={"status": status, "regions": len(review.regions),
                                                 "annotation_id": review.annotation_id, "skipped": review.skipped},
                                        by=review.by)
            kinds = sorted({r["kind"] for r in review.regions})
            store.save_review(review.inspection_id, status, review.regions, action, label=", ".join(kinds) or None,
                              by=review.by)
            counts[status] += 1
            problems += [f"inspection {review.inspection_id}: {s}" for s in review.skipped]
        return {"imported": len(reviews), **counts, "problems": problems}

    # -- models -------------------------------------------------------------------------------

    @api.get("/models/catalog", tags=["models"], dependencies=reads)
    def catalog(request: Request) -> dict[str, Any]:
        """Registered models with the headline numbers of their eval/metrics.json (when the run
        was evaluated), which is active, and finished training jobs that can be activated."""
        from ..alerts import json_safe

        line = _line(request)
        active_sup = str(line.supervised_path) if line.supervised_path else None
        items = []
        for m in line.store.get().list_models():
            metrics = _read_metrics(m.path) if m.path else None
            items.append({"version": m.version, "kind": m.kind, "path": m.path, "details": json_safe(m.details),
                          "created_at": m.created_at.isoformat(), "metrics": headline_metrics(m.kind, metrics),
                          "evaluated": metrics is not None,
                          "active": m.version == line.version or (m.kind == "supervised" and m.path == active_sup)})
        jobs = [{"id": j.id, "path": str(j.sup), "finished_at": j.finished_at, "classes": j.classes,
                 "metrics": headline_metrics("supervised", _read_metrics(j.sup)),
                 "active": str(j.sup) == active_sup}
                for j in _jobs(request).list()
                if j.state == "done" and not any(m["kind"] == "supervised" and m["path"] == str(j.sup) for m in items)]
        run = next((m["path"] for m in items if m["kind"] == "ganomaly" and m["version"] == line.version), None)
        return {"active": line.version, "active_run": run or str(line.settings.run), "supervised": active_sup,
                "items": items, "trained": jobs}

    return api
