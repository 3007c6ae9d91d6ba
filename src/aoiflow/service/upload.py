"""Receiving an upload: a multipart/form-data body streamed straight to a file, with a size limit.

FastAPI's ``UploadFile`` would have read the whole body (to a spooled temporary file) before the
endpoint runs, whatever its size. Here the body is parsed as it arrives (python-multipart's
streaming parser), the image part goes to disk chunk by chunk, and the limit stops the writing
the moment it is passed. The rest of an oversized body is then read and dropped (up to
``DRAIN_BYTES`` more) before answering 413: a server that closes a socket with unread bytes in
it makes the client's OS send a reset that can destroy the 413 response on its way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096      # text fields (``source``) are short
MAX_FIELDS = 16
FORM_OVERHEAD = 64 * 1024   # boundaries, part headers and text fields around the file
DRAIN_BYTES = 64 * 1024 * 1024


class UploadRejected(Exception):
    """The request cannot become an inspection; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """A received upload: the file on disk, its client-side name, the text fields, timings."""

    path: Path
    file_name: str | None
    size: int
    fields: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _FormReader:
    """python-multipart callbacks: the ``file`` part to ``target``, text fields to a dict."""

    def __init__(self, target: Path, limit: int) -> None:
        self.target, self.limit = target, limit
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None
        self.size = 0
        self.too_large = False
        self.problem: str | None = None
        self._out: IO[bytes] | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._seen_file = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data, "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == FILE_FIELD and self._seen_file:
            self.problem = "one image per request: the form has more than one part named 'file'"
        elif self._name == FILE_FIELD:
            self._seen_file = True
            raw = options.get(b"filename")
            self.file_name = raw.decode("utf-8", "replace") if raw is not None else None
            self._out = open(self.target, "wb")  # noqa: SIM115

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.too_large:
            return
        if self._out is not None:
            self.size += end - start
            if self.size > self.limit:
                self.too_large = True
                self.close()
                self.target.unlink(missing_ok=True)
                return
            self._out.write(data[start:end])
        elif len(self._value) + end - start <= MAX_FIELD_BYTES:
            self._value += data[start:end]
        else:
            self.problem = f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes"

    def _part_end(self) -> None:
        if self._out is not None:
            self.close()
        elif self._name and self._name != FILE_FIELD and len(self.fields) < MAX_FIELDS:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _too_large(limit: int) -> UploadRejected:
    return UploadRejected(413, f"upload too large: the limit is {limit / 2**20:.3g} MiB (--max-upload-mb)")


async def receive_upload(request: Request, target: Path, limit: int) -> Upload:
    """Stream the request's multipart body; the ``file`` part goes to ``target``. Raises
    ``UploadRejected`` (413 too large, 400 malformed, 422 no file part) and leaves no file then."""
    started = time.perf_counter()
    ctype, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadRejected(415, "expected a multipart/form-data body with the image in a part named 'file'")
    declared = request.headers.get("content-length")
    body_limit = limit + FORM_OVERHEAD
    reader = _FormReader(target, limit)
    parser = MultipartParser(boundary, reader.callbacks())
    received = 0
    try:
        if declared is not None and declared.isdigit() and int(declared) > body_limit + DRAIN_BYTES:
            raise _too_large(limit)  # not worth reading: answer now
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                reader.too_large = True
            if reader.too_large:
                if received > body_limit + DRAIN_BYTES:
                    break
                continue  # drain: read and drop
            parser.write(chunk)
            if reader.problem:
                raise UploadRejected(400, reader.problem)
        if reader.too_large:
            raise _too_large(limit)
        parser.finalize()
    except ClientDisconnect:
        raise UploadRejected(400, "the client disconnected before the upload was complete") from None
    except UploadRejected:
        raise
    except Exception as exc:  # noqa: BLE001  python-multipart's parse errors
        raise UploadRejected(400, f"malformed multipart body: {exc}") from None
    finally:
        reader.close()
        if reader.too_large or reader.problem:
            target.unlink(missing_ok=True)
    if reader.file_name is None and not target.exists():
        raise UploadRejected(422, "no image: the form needs a file part named 'file'")
    if reader.size == 0:
        target.unlink(missing_ok=True)
        raise UploadRejected(422, "the uploaded file is empty (0 bytes)")
    return Upload(target, reader.file_name, reader.size, reader.fields, time.perf_counter() - started)
