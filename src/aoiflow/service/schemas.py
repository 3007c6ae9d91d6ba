"""The API's bodies: what the write endpoints take, and the verdict as every endpoint gives it
(``verdict_json`` makes it, ``VerdictOut`` documents it)."""

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .alerts import json_safe
from .store import InspectionRecord
from .store.records import REVIEW_STATUSES


class ReviewIn(BaseModel):
    status: Literal[REVIEW_STATUSES]  # type: ignore[valid-type]
    label: str | None = Field(None, max_length=200)
    by: str | None = Field(None, max_length=200)


class AckIn(BaseModel):
    by: str = Field("operator", max_length=200)


class ActivateIn(BaseModel):
    run: str = Field(description="run folder or exported model, as a path on the service's machine")
    supervised: str | None = None


class VerdictOut(BaseModel):
    """One inspection as the API gives it (``stored`` False: the database was away, the record
    waits in the spool and has no id yet)."""

    id: int | None
    stored: bool
    created_at: datetime
    source: str
    file_name: str
    a: float
    r: float
    l: float
    threshold: float
    decision: Literal["normal", "anomalous"]
    verdict: str = Field(description="ok, anomaly, defect:<kind> or unknown_anomaly")
    kind: str | None
    confidence: float | None
    regions: list[dict[str, Any]]
    model_version: str
    supervised_version: str | None
    timings_ms: dict[str, float]
    descriptor: list[float] | None = Field(description="what kind of anomaly the part shows, the nine numbers "
                                                       "aoiflow.service.descriptors.DESCRIPTOR_FIELDS (inspections "
                                                       "stored before them keep six: A, R, L, area share, "
                                                       "regions, map max)")
    image_url: str | None
    overlay_url: str | None
    review_status: str | None = None
    review_label: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    reviewed_regions: list[dict[str, Any]] | None = Field(None, description="the regions a review left "
                                                                            "([] for a part reviewed normal)")


def verdict_json(record: InspectionRecord, inspection_id: int | None) -> dict[str, Any]:
    """The API's view of an inspection: the record's fields, URLs of its files, whether stored."""
    d = json_safe(asdict(record))
    d["id"] = inspection_id
    d["stored"] = inspection_id is not None
    base = f"/api/v1/inspections/{inspection_id}"
    d["image_url"] = f"{base}/image" if inspection_id is not None and record.image_path else None
    d["overlay_url"] = f"{base}/overlay" if inspection_id is not None and record.overlay_path else None
    return d
