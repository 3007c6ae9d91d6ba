"""The operator pages of ``aoiflow serve``: server-rendered Jinja2 pages over the API.

    /                    Live: latest frames, yield and defect rate, throughput, latency, models
    /inspections         filterable, paged table; /inspections/{id} one inspection in detail
    /review              the review queue: an outline editor over the pre-labels
    /labels              reviewed labels: export, Label Studio, training the defect-kind model
    /alerts              the alert feed with its evidence; acknowledge
    /models              GANomaly runs and supervised models with their metrics; activate

The pages read through the API (``pages.ApiClient`` calls it in-process, with the caller's
token), their scripts write through it, and live updates come from ``/api/v1/events``. Assets are
files in ``static/`` (own CSS and plain JavaScript, no CDN, nothing fetched from elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def mount_ui(app: Any, read_access: Any, write_access: Any) -> None:
    """Add the pages, their API and their static files to ``app``."""
    from fastapi.staticfiles import StaticFiles

    from .api import ui_api
    from .pages import pages

    app.include_router(ui_api(read_access, write_access))
    app.include_router(pages())
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
