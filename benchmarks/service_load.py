"""Load on the line service: latency and throughput with 1, 4 and 16 clients, and a kill -9 check.

    .venv/bin/python benchmarks/service_load.py --run runs/tile [--frames DIR] [--n 200] [--db URL]
    .venv/bin/python benchmarks/service_load.py --run runs/tile --kill-test [--n 60]

Starts ``aoiflow serve`` as a subprocess on 127.0.0.1 (a SQLite file in a temporary data folder
unless --db names a database, e.g. PostgreSQL), then for each client count posts --n frames
(cycling through --frames, default the shared tile test images) with ``aoiflow.service.replay``
and prints p50/p99 latency (client side, upload to answer), frames/s, the answers by HTTP status
(503: the queue was full) and sent vs stored, the latter counted back through the API.

--kill-test: the service watches a folder; frames are copied into it at --fps while the service
is killed with SIGKILL once about a third are judged, then started again on the same data folder
and database. It reports files dropped, inspections stored, files judged twice and files never
judged (both must be 0).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from aoiflow.service.replay import frames_in, replay

TOKEN = "bench"
SHARED_FRAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "magnetictile_tile" / "test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``aoiflow serve`` in a subprocess."""

    def __init__(self, run: Path, data_dir: Path, db: str | None, queue: int, watch: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "aoiflow.cli", "serve", "--run", str(run), "--data-dir", str(data_dir),
                     "--port", str(self.port), "--token", TOKEN, "--queue", str(queue)]
        self.args += ["--db", db] if db else []
        self.args += ["--watch", str(watch)] if watch else []
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "ab")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Service:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not get ready in {timeout} s; see {self.log.name}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def all_inspections(url: str, **params) -> list[dict]:
    items, offset = [], 0
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            page = http.get("/api/v1/inspections", params={**params, "limit": 1000, "offset": offset}).json()
            items += page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items


def load_test(args: argparse.Namespace, frames: list[Path], workdir: Path) -> None:
    service = Service(args.run, workdir / "line", args.db, args.queue).start()
    try:
        replay(frames[:4], service.url, token=TOKEN)  # warm-up, not counted
        print(f"{'clients':>7} {'sent':>5} {'ok':>5} {'stored':>6} {'in db':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'frames/s':>8}  answers")
        for clients in args.clients:
            source = f"load-{clients}"
            batch = list(itertools.islice(itertools.cycle(frames), args.n))
            r = replay(batch, service.url, token=TOKEN, concurrency=clients, source=source)
            in_db = len(all_inspections(service.url, source=source))
            print(f"{clients:>7} {r.sent:>5} {r.ok:>5} {r.stored:>6} {in_db:>6} {r.percentile_ms(50):>8.1f} "
                  f"{r.percentile_ms(99):>8.1f} {r.fps:>8.1f}  {dict(r.statuses)}")
    finally:
        service.stop()


def kill_test(args: argparse.Namespace, frames: list[Path], workdir: Path) -> None:
    watch = workdir / "camera"
    watch.mkdir()
    service = Service(args.run, workdir / "line", args.db, args.queue, watch=watch).start()
    names = [f"{i:05d}_{p.name}" for i, p in zip(range(args.n), itertools.cycle(frames))]
    sources = dict(zip(names, itertools.cycle(frames)))

    def camera() -> None:
        for name in names:
            tmp = watch / f".{name}.tmp"
            shutil.copyfile(sources[name], tmp)
            os.replace(tmp, watch / name)  # as a camera would: the name appears when the file is whole
            time.sleep(1 / args.fps)

    cam = threading.Thread(target=camera)
    cam.start()
    try:
        while len(all_inspections(service.url, source="watch")) < args.n // 3:
            time.sleep(0.1)
        service.kill()
        print(f"killed the service (SIGKILL) with {len(list(watch.iterdir()))} of {args.n} files dropped")
        time.sleep(1.0)  # the camera keeps dropping files while the service is down
        service = Service(args.run, workdir / "line", args.db, args.queue, watch=watch).start()
        cam.join()
        deadline = time.monotonic() + 60 + args.n
        while time.monotonic() < deadline:
            judged = Counter(i["file_name"] for i in all_inspections(service.url, source="watch"))
            if set(names) <= set(judged):
                break
            time.sleep(0.5)
        time.sleep(1.5)  # anything judged twice shows by now
        judged = Counter(i["file_name"] for i in all_inspections(service.url, source="watch"))
    finally:
        cam.join()
        service.stop()
    twice = sorted(n for n, c in judged.items() if c > 1)
    missing = sorted(set(names) - set(judged))
    print(f"files dropped {len(names)}, inspections stored {sum(judged.values())}, judged twice {len(twice)}, "
          f"never judged {len(missing)}" + (f"  twice: {twice[:5]}" if twice else "")
          + (f"  missing: {missing[:5]}" if missing else ""))
    if twice or missing:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder or exported model to serve")
    parser.add_argument("--frames", type=Path, default=SHARED_FRAMES, help="folder of images to send")
    parser.add_argument("--n", type=int, default=200, help="frames per client count (or files in --kill-test)")
    parser.add_argument("--clients", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--db", help="database URL (default: a SQLite file in the temporary data folder)")
    parser.add_argument("--queue", type=int, default=64, help="the service's --queue")
    parser.add_argument("--kill-test", action="store_true", help="kill -9 a watching service mid-stream, restart, "
                                                                 "check nothing was lost or judged twice")
    parser.add_argument("--fps", type=float, default=20.0, help="--kill-test: files dropped per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder and logs")
    args = parser.parse_args()
    frames = frames_in(args.frames)
    if not frames:
        raise SystemExit(f"{args.frames}: no images")
    workdir = Path(tempfile.mkdtemp(prefix="aoiflow-load-"))
    try:
        (kill_test if args.kill_test else load_test)(args, frames, workdir)
    finally:
        if args.keep:
            print(f"data and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
