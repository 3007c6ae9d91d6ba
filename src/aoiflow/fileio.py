"""Atomic file writes: results already on disk are never replaced by a half-written file."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path


def _file_mode() -> int:
    """The mode a plain ``open()`` would give under the current umask (usually 0644).
    mkstemp makes its files 0600, which would hide reports from everyone else on the PC."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and then move the finished file onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def output_stems(paths: Iterable[Path], base: Path) -> dict[Path, str]:
    """A flat output name per input file, unique within the batch: the path under ``base`` with
    sub-folders joined by '__' and the suffix dropped (``good/x.png`` -> ``good__x``), except
    where two inputs would share a name (``x.png`` and ``x.jpg``): those keep their suffix
    (``x_png``, ``x_jpg``)."""
    paths = list(paths)

    def flat(path: Path) -> str:
        rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
        return "__".join(rel.with_suffix("").parts)

    counts = Counter(flat(p) for p in paths)
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for p in paths:
        name = flat(p) if counts[flat(p)] == 1 else f"{flat(p)}_{p.suffix.lstrip('.')}"
        unique, k = name, 1
        while unique in taken:  # 'a__b.png' beside 'a/b.png': rare, but never overwrite
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        names[p] = unique
    return names


Row = Sequence[object] | Mapping[str, object]


def _cells(row: Row, fields: Sequence[str]) -> list[object]:
    return [row.get(f, "") for f in fields] if isinstance(row, Mapping) else list(row)


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[Row]) -> None:
    """A whole CSV file (header + rows given as sequences or dicts keyed by field), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(fields)
    writer.writerows(_cells(r, fields) for r in rows)
    atomic_write_text(path, buf.getvalue())


class CsvAppender:
    """A CSV written row by row and flushed each time: a crash keeps every row already made."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.add(self.fields)

    def add(self, row: Row) -> None:
        self.writer.writerow(_cells(row, self.fields))
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "CsvAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of a file's SHA-256: a model version that changes whenever
    the file does (a run trained again, calibrated again or given a head)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:length]
