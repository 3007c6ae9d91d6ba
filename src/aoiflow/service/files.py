"""The service's files on disk: uploaded and watched images, overlays, under one data folder.

Layout of DATA_DIR/:
  images/YYYY/MM/DD/<upload id>_<safe name>     every inspected image (uploads and watched files)
  overlays/YYYY/MM/DD/<upload id>_overlay.png   image and anomaly-map heat side by side
  tmp/                                          uploads being received
  spool.jsonl                                   records waiting for the database (``spool.py``)
  aoiflow.db                                    the SQLite store, unless --db says otherwise

The database keeps paths relative to DATA_DIR; ``resolve`` refuses any that would lead outside.
The upload id is made before the inspection has a database id (the file is saved first), so it
is a random hex token, not the inspection id.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100


def safe_name(name: str | None, default: str = "upload") -> str:
    """A file name that is only a name: the last path part of ``name`` (either slash), characters
    other than letters, digits, '.', '_' and '-' replaced by '_', no leading dots, at most
    MAX_NAME characters with the suffix kept. '../../x.png' -> 'x.png'."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")
    if not base or base in ("_",):
        return default
    if len(base) > MAX_NAME:
        stem, dot, suffix = base.rpartition(".")
        suffix = suffix[:10] if dot else ""
        base = (stem if dot else base)[: MAX_NAME - len(suffix) - 1] + (f".{suffix}" if suffix else "")
    return base


class DataDir:
    """The service's data folder: where images and overlays go, and the check that a stored path
    stays inside it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        for sub in ("images", "overlays", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    def temp_path(self) -> Path:
        return self.root / "tmp" / f"{self.new_id()}.part"

    def _dated(self, kind: str, when: datetime, name: str) -> Path:
        folder = self.root / kind / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def image_path(self, upload_id: str, name: str, when: datetime) -> Path:
        return self._dated("images", when, f"{upload_id}_{safe_name(name)}")

    def overlay_path(self, upload_id: str, when: datetime) -> Path:
        return self._dated("overlays", when, f"{upload_id}_overlay.png")

    def keep(self, source: Path, upload_id: str, name: str, when: datetime, move: bool) -> Path:
        """Move (an upload) or copy (a watched file, which stays where the camera put it) an
        image into images/; its new path."""
        target = self.image_path(upload_id, name, when)
        if move:
            os.replace(source, target)
        else:
            shutil.copyfile(source, target)
        return target

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def resolve(self, stored: str | None) -> Path | None:
        """The file of a stored relative path, or None when there is none, it is missing, or it
        would lie outside the data folder."""
        if not stored:
            return None
        path = (self.root / stored).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def clear_temp(self) -> None:
        """Remove uploads a crash left half received."""
        for p in (self.root / "tmp").glob("*.part"):
            p.unlink(missing_ok=True)
