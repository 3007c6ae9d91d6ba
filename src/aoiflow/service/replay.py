"""Replay a folder of frames against a running service (``aoiflow replay FRAMES --to URL``).

Posts every image (sorted, recursively) to /api/v1/inspect from ``concurrency`` client threads,
starting frame i no earlier than i / fps seconds after the start (as fast as answers come when
``fps`` is None), and reports what was sent, judged and refused, with latency percentiles.
No torch here: a replay client runs on any PC next to the line.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}  # aoiflow.data's, without importing torch


@dataclass
class ReplayResult:
    sent: int = 0
    ok: int = 0
    stored: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status (or exception name) of each frame
    verdicts: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)  # of the answered frames
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies of all answered frames, in ms."""
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    @property
    def fps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str) if k != 200)
        return (f"sent {self.sent}, ok {self.ok} (stored {self.stored}), errors {self.errors}"
                f"{f' ({refused})' if refused else ''}; latency p50 {self.percentile_ms(50):.1f} ms, "
                f"p99 {self.percentile_ms(99):.1f} ms; {self.fps:.1f} frames/s over {self.seconds:.1f} s")


def frames_in(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not found")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def inspect_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api/v1/inspect") else f"{url}/api/v1/inspect"


def replay(frames: str | Path | list[Path], url: str, fps: float | None = None, token: str | None = None,
           concurrency: int = 1, source: str = "replay", timeout_s: float = 120.0,
           on_answer: Callable[[Path, int, dict | None], None] | None = None) -> ReplayResult:
    """Post the frames; ``on_answer(path, status, json)`` is called from the client threads."""
    if concurrency < 1 or (fps is not None and fps <= 0):
        raise ValueError("concurrency must be >= 1 and fps > 0")
    paths = frames if isinstance(frames, list) else frames_in(frames)
    target = inspect_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result = ReplayResult()
    lock = threading.Lock()
    next_index = iter(range(len(paths)))
    start = time.perf_counter()

    def client() -> None:
        with httpx.Client(timeout=timeout_s, headers=headers) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                if fps is not None:
                    delay = start + i / fps - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                path = paths[i]
                sent = time.perf_counter()
                body = None
                try:
                    with open(path, "rb") as f:
                        response = http.post(target, files={"file": (path.name, f)}, data={"source": source})
                    status: int | str = response.status_code
                    if "json" in response.headers.get("content-type", ""):
                        body = response.json()
                except (httpx.HTTPError, OSError) as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - sent
                with lock:
                    result.sent += 1
                    result.statuses[status] += 1
                    if isinstance(status, int):
                        result.latencies_s.append(took)
                    if status == 200:
                        result.ok += 1
                        result.stored += bool(body and body.get("stored"))
                        result.verdicts[body.get("verdict") if body else "?"] += 1
                if on_answer is not None:
                    on_answer(path, status if isinstance(status, int) else 0, body)

    threads = [threading.Thread(target=client, name=f"replay-{k}", daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result
