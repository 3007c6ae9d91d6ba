"""Label Studio interop: review tasks out with the pre-labels as predictions, annotations back in.

Label Studio keeps image regions in percent of the image size, measured from the image's top-left
corner; aoiflow keeps pixels with pixel centres at integers (``labels.py``). So a point (x, y)
is (100 (x + 0.5) / W, 100 (y + 0.5) / H) there, and back x = p W / 100 - 0.5.

The labelling config the tasks are made for (``LABEL_CONFIG``; the names ``label``, ``box`` and
``image`` are what the results refer to):

    <View>
      <Image name="image" value="$image"/>
      <PolygonLabels name="label" toName="image">...kinds...</PolygonLabels>
      <RectangleLabels name="box" toName="image">...kinds...</RectangleLabels>
    </View>

An imported annotation with no region says the part is normal (a false alarm, review status
"rejected"); one equal to the pre-labels is "confirmed"; anything else "corrected".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from .labels import LabelProblem, clean_regions

FROM_POLYGON, FROM_BOX, TO_NAME = "label", "box", "image"
_IMAGE_URL = re.compile(r"/api/v1/inspections/(\d+)/image")


def label_config(kinds: Iterable[str]) -> str:
    """The Label Studio labelling config (XML) for tasks with these kinds."""
    labels = "".join(f"    <Label value={quoteattr(k)}/>\n" for k in dict.fromkeys(kinds))
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <PolygonLabels name="{FROM_POLYGON}" toName="{TO_NAME}" strokeWidth="2">\n{labels}  </PolygonLabels>\n'
            f'  <RectangleLabels name="{FROM_BOX}" toName="{TO_NAME}">\n{labels}  </RectangleLabels>\n</View>\n')


def to_percent(polygon: Sequence[Sequence[float]], width: int, height: int) -> list[list[float]]:
    return [[100.0 * (float(x) + 0.5) / width, 100.0 * (float(y) + 0.5) / height] for x, y in polygon]


def from_percent(points: Sequence[Sequence[float]], width: int, height: int) -> list[list[float]]:
    return [[float(px) * width / 100.0 - 0.5, float(py) * height / 100.0 - 0.5] for px, py in points]


def polygon_results(regions: Sequence[dict[str, Any]], width: int, height: int, prefix: str) -> list[dict[str, Any]]:
    """Regions as Label Studio polygon results."""
    return [{"id": f"{prefix}_{i}", "from_name": FROM_POLYGON, "to_name": TO_NAME, "type": "polygonlabels",
             "original_width": width, "original_height": height, "image_rotation": 0,
             "value": {"points": to_percent(r["polygon"], width, height), "closed": True,
                       "polygonlabels": [r["kind"]]}}
            for i, r in enumerate(regions, start=1)]


def task(inspection: dict[str, Any], prelabels: Sequence[dict[str, Any]], width: int, height: int,
         image_url: str) -> dict[str, Any]:
    """One Label Studio task for an inspection (the API's view of it) with its pre-labels as a
    prediction."""
    iid = inspection["id"]
    uncertainty = abs(float(inspection["a"]) - float(inspection["threshold"]))
    return {
        "data": {"image": image_url, "inspection_id": iid, "file_name": inspection["file_name"],
                 "a": inspection["a"], "threshold": inspection["threshold"], "verdict": inspection["verdict"]},
        "meta": {"aoiflow_inspection_id": iid},
        "predictions": [{"model_version": inspection["model_version"], "score": round(uncertainty, 6),
                         "result": polygon_results(prelabels, width, height, f"i{iid}")}],
    }


@dataclass
class ImportedReview:
    """What one Label Studio task's annotation says about one inspection."""

    inspection_id: int
    regions: list[dict[str, Any]]
    by: str
    annotation_id: Any = None
    skipped: list[str] = field(default_factory=list)  # results that could not be used, and why


def inspection_id_of(task: dict[str, Any]) -> int | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    for value in (data.get("inspection_id"), (task.get("meta") or {}).get("aoiflow_inspection_id")
                  if isinstance(task.get("meta"), dict) else None):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    found = _IMAGE_URL.search(str(data.get("image", "")))
    return int(found.group(1)) if found else None


def _who(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return f"labelstudio:{who}" if who not in (None, "") else "labelstudio"


def _annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's last annotation that was not cancelled (by update time, else list order)."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(enumerate(annotations), key=lambda ia: (str(ia[1].get("updated_at") or ""), ia[0]))[1]


def _regions(results: Iterable[Any], width: int, height: int) -> tuple[list[dict[str, Any]], list[str]]:
    regions, skipped = [], []
    for res in results:
        if not isinstance(res, dict) or not isinstance(res.get("value"), dict):
            skipped.append("a result without a value")
            continue
        kind, value = res.get("type"), res["value"]
        if kind not in ("polygonlabels", "rectanglelabels"):
            if kind not in ("choices", "textarea", "rating"):  # task-level answers carry no region
                skipped.append(f"result type {kind!r} is not a polygon or a rectangle")
            continue
        if value.get("rotation") or res.get("image_rotation"):
            skipped.append(f"result {res.get('id')}: rotated shapes are not supported")
            continue
        names = value.get(kind)
        if not isinstance(names, list) or not names:
            skipped.append(f"result {res.get('id')}: no label chosen")
            continue
        w, h = int(res.get("original_width") or width), int(res.get("original_height") or height)
        if (w, h) != (width, height):
            skipped.append(f"result {res.get('id')}: made on a {w}x{h} image, the inspection's is {width}x{height}")
            continue
        if kind == "polygonlabels":
            points = value.get("points") or []
        else:
            x, y, bw, bh = (float(value.get(k, 0)) for k in ("x", "y", "width", "height"))
            points = [[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]]
        regions.append({"kind": str(names[0]), "polygon": from_percent(points, width, height),
                        "source": "labelstudio"})
    return regions, skipped


def read_export(doc: Any, size_of: Any) -> tuple[list[ImportedReview], list[str]]:
    """A Label Studio JSON export (a list of tasks) -> the reviews it holds, and problems with
    tasks left out. ``size_of(inspection_id) -> (width, height) | None`` (None: no such
    inspection, or its image is gone)."""
    if isinstance(doc, dict) and isinstance(doc.get("tasks"), list):
        doc = doc["tasks"]
    if not isinstance(doc, list):
        raise LabelProblem("a Label Studio export is a JSON list of tasks (Export > JSON)")
    reviews, problems = [], []
    for n, t in enumerate(doc, start=1):
        if not isinstance(t, dict):
            problems.append(f"task {n}: not an object")
            continue
        iid = inspection_id_of(t)
        if iid is None:
            problems.append(f"task {t.get('id', n)}: no inspection id in data.inspection_id or the image URL")
            continue
        annotation = _annotation(t)
        if annotation is None:
            problems.append(f"task {t.get('id', n)} (inspection {iid}): no annotation that was not cancelled")
            continue
        size = size_of(iid)
        if size is None:
            problems.append(f"task {t.get('id', n)}: inspection {iid} is unknown or its image is gone")
            continue
        regions, skipped = _regions(annotation.get("result") or [], *size)
        try:
            regions = clean_regions(regions, *size)
        except LabelProblem as exc:
            problems.append(f"task {t.get('id', n)} (inspection {iid}): {exc}")
            continue
        reviews.append(ImportedReview(iid, regions, _who(annotation), annotation.get("id"), skipped))
    return reviews, problems
