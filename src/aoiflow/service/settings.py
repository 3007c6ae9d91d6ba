"""``ServiceSettings``: everything ``aoiflow serve`` is told, checked once at the boundary.

    settings = ServiceSettings(run="runs/tile", data_dir="line")   # sqlite:///line/aoiflow.db
    app = create_app(settings)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

DB_FILE = "aoiflow.db"


class ServiceSettings(BaseModel):
    """The line service's settings (``aoiflow serve`` flags; the library can build one directly)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    run: Path = Field(description="run folder, or an exported .onnx/.xml model")
    supervised: Path | None = Field(None, description="the two-stage defect-kind model (passed to Inspector.load "
                                                      "where it accepts one)")
    data_dir: Path = Field(Path("aoiflow-line"), description="images, overlays, the retry spool and, by default, "
                                                             "the SQLite database")
    db: str | None = Field(None, description=f"SQLAlchemy URL (default sqlite:///<data_dir>/{DB_FILE})")
    watch: Path | None = Field(None, description="folder whose new images are inspected (recursively)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token required for writes")
    read_token: bool = Field(False, description="require the token for reads too")
    max_upload_mb: float = Field(32.0, gt=0)
    queue: int = Field(64, ge=1, description="inspections waiting for the model before uploads get 503")
    raw: bool = Field(False, description="inputs are raw frames: apply the run's preprocessing first")
    threshold: float | None = Field(None, description="override the run's decision threshold on A")
    threads: int = Field(2, ge=1, description="torch threads for inference")
    max_pixels: int | None = Field(None, ge=4, description="refuse images with more pixels (process-wide)")
    overlays: Literal["anomalous", "all", "none"] = Field("anomalous", description="which inspections get an overlay PNG")
    mqtt: str | None = Field(None, description="MQTT broker host:port for alerts and verdicts")
    mqtt_prefix: str = "aoiflow"
    webhook: str | None = Field(None, description="URL that alerts are POSTed to")
    cors: list[str] = Field(default_factory=list, description="origins allowed by CORS (off when empty)")
    # alert rules (see aoiflow.service.alerts.rules)
    input_health_window: int = Field(100, ge=1)
    input_health_limit: float = Field(0.05, ge=0, lt=1)
    rate_window: int = Field(200, ge=1)
    rate_baseline_n: int = Field(1000, ge=1)
    # new kinds of anomaly (alerts.NewAnomalyKind; known kinds from the store, see known_kinds.py)
    new_kind: bool = Field(True, description="alert when flagged parts unlike every known kind gather")
    new_kind_k: int = Field(5, ge=2, description="alike novel parts that make a new kind")
    new_kind_window: int = Field(1000, ge=2, description="inspections a new kind's parts must gather within")
    new_kind_margin: float = Field(1.5, ge=1, description="novel beyond this many radii of every known kind")
    new_kind_min_samples: int = Field(10, ge=2, description="labelled parts a kind needs to count as known")
    new_kind_min_normals: int = Field(50, ge=2, description="passing parts needed before the rule judges")
    new_kind_labelled: int = Field(5000, ge=1, description="newest labelled parts the known kinds are fitted on")
    new_kind_passing: int = Field(500, ge=2, description="newest passing parts the reference of normal is fitted on")
    new_kind_refit_every: int = Field(500, ge=1, description="inspections between refits of the known kinds")
    # folder watcher
    settle_s: float = Field(0.5, ge=0, description="a watched file must keep its size this long before it is read")
    rescan_s: float = Field(30.0, ge=0, description="rescan the watched folder this often (0: only events)")
    spool_retry_s: float = Field(2.0, gt=0, description="how often records kept while the database was away are retried")

    @field_validator("mqtt")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, e.g. localhost:1883, got {value!r}")
        return value

    @model_validator(mode="after")
    def _new_kind_limits(self) -> ServiceSettings:
        # Each pair (smaller, larger): otherwise no group could ever gather, no kind could ever be
        # known, or the reference of normal (fitted on at most new_kind_passing parts) never be fitted.
        for small, large in (("new_kind_k", "new_kind_window"), ("new_kind_min_samples", "new_kind_labelled"),
                             ("new_kind_min_normals", "new_kind_passing")):
            if getattr(self, large) < getattr(self, small):
                raise ValueError(f"{large} ({getattr(self, large)}) must be at least {small} ({getattr(self, small)})")
        return self

    @model_validator(mode="after")
    def _token_for_reads(self) -> ServiceSettings:
        if self.read_token and self.token is None:
            raise ValueError("read_token needs a token (--token or AOIFLOW_TOKEN)")
        return self

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.data_dir / DB_FILE).expanduser().resolve()}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def mqtt_address(self) -> tuple[str, int] | None:
        if self.mqtt is None:
            return None
        host, _, port = self.mqtt.rpartition(":")
        return host, int(port)
