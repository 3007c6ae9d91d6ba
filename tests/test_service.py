"""The line service end to end: a real uvicorn server on 127.0.0.1, a tiny trained run, real tile
images, a real SQLite file (and PostgreSQL where it is available), real HTTP through httpx."""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed (pip install 'aoiflow[service]')")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from aoiflow.calibrate import verdict  # noqa: E402
from aoiflow.cli import app as cli_app  # noqa: E402
from aoiflow.predict import Inspector  # noqa: E402
from aoiflow.service.alerts.novelty import NORMAL_KIND  # noqa: E402
from aoiflow.service.app import create_app  # noqa: E402
from aoiflow.service.descriptors import DESCRIPTOR_FIELDS, is_current, map_descriptor  # noqa: E402
from aoiflow.service.files import safe_name  # noqa: E402
from aoiflow.service.known_kinds import known_kinds_from_store, sample_label  # noqa: E402
from aoiflow.service.settings import ServiceSettings  # noqa: E402
from aoiflow.service.store import DescriptorSample, InspectionRecord, Store  # noqa: E402
from aoiflow.train import fit  # noqa: E402

TOKEN = "line-3-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 20.0  # seconds: bound on every wait for the server, the watcher or the spool


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit all-black PNG written row by row (as in test_first_use): a huge one is tiny on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# -- fixtures: one tiny run for the module, a live server per test ---------------------------

@pytest.fixture(scope="module")
def tile_run(module_tile_subset, tmp_path_factory, module_tiny_config) -> Path:
    run = tmp_path_factory.mktemp("service") / "run"
    fit(module_tile_subset, run, module_tiny_config, progress=False)
    return run


@pytest.fixture(scope="module")
def other_run(tile_run) -> Path:
    """The same weights in another folder: another model version, for activation."""
    return Path(shutil.copytree(tile_run, tile_run.parent / "run_b"))


@pytest.fixture(scope="module")
def tiles(module_tile_subset) -> list[Path]:
    """Real tile images: 4 good and 6 defective."""
    test = module_tile_subset / "test"
    return sorted((test / "good").iterdir()) + sorted((test / "blowhole").iterdir()) + sorted((test / "crack").iterdir())


@pytest.fixture(scope="module")
def inspector(tile_run) -> Inspector:
    return Inspector.load(tile_run)


class LiveServer:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive(), "the server stopped while starting (see the log above)"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not shut down"

    @property
    def line(self):
        return self.app.state.line

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=WAIT, **kw)


def settings_for(tmp_path: Path, run: Path, **changes) -> ServiceSettings:
    values = {"run": run, "data_dir": tmp_path / "line", "token": TOKEN, "max_upload_mb": 0.25, "overlays": "all",
              "input_health_window": 10, "input_health_limit": 0.2, "spool_retry_s": 0.2, "settle_s": 0.2,
              "rescan_s": 0}
    return ServiceSettings(**{**values, **changes})


@contextmanager
def running(settings: ServiceSettings, **kw):
    with LiveServer(create_app(settings, **kw)) as server:
        yield server


@pytest.fixture
def live(tmp_path, tile_run, inspector):
    with running(settings_for(tmp_path, tile_run), inspector=inspector) as server:
        yield server


def post(client: httpx.Client, path: Path, name: str | None = None, source: str | None = None,
         headers: dict | None = AUTH) -> httpx.Response:
    data = {"source": source} if source else {}
    return client.post("/api/v1/inspect", files={"file": (name or path.name, path.read_bytes())}, data=data,
                       headers=headers)


def wait_for(check, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- inspect ----------------------------------------------------------------------------------

def test_inspect_gives_the_inspectors_verdict_and_keeps_it(live, tiles, inspector):
    with live.client() as http:
        r = post(http, tiles[4], source="cam-1")
        assert r.status_code == 200, r.text
        v = r.json()
        expected = next(iter(inspector.predict_files([tiles[4]])))
        assert v["a"] == pytest.approx(expected.a, rel=1e-5, abs=1e-6)
        assert (v["r"], v["l"]) == pytest.approx((expected.r, expected.l), rel=1e-5, abs=1e-6)
        assert v["decision"] == expected.decision and v["verdict"] == expected.verdict
        assert v["threshold"] == pytest.approx(inspector.threshold)
        assert v["model_version"] == inspector.version and v["supervised_version"] is None
        assert v["stored"] is True and v["source"] == "cam-1" and v["file_name"] == tiles[4].name
        assert {"upload", "queue", "inference", "store", "total"} <= set(v["timings_ms"])
        assert len(v["descriptor"]) == len(DESCRIPTOR_FIELDS) and v["descriptor"][0] == pytest.approx(math.asinh(v["a"]))
        stored = http.get(f"/api/v1/inspections/{v['id']}").json()
        assert stored["a"] == v["a"] and stored["verdict"] == v["verdict"]
        image = http.get(v["image_url"])
        assert image.status_code == 200 and image.content == tiles[4].read_bytes()
        overlay = http.get(v["overlay_url"])
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
        assert http.get("/api/v1/inspections/999999").status_code == 404
        metrics = http.get("/metrics").text
        assert 'aoiflow_inspections_total{source="cam-1",verdict=' in metrics and "aoiflow_queue_depth" in metrics
        assert http.get("/healthz").json() == {"status": "ok"} and http.get("/readyz").status_code == 200
        assert http.get("/docs").status_code == 200 and "/api/v1/inspect" in http.get("/openapi.json").text


def test_writes_need_the_token(live, tiles, tmp_path, tile_run, inspector):
    with live.client() as http:
        assert post(http, tiles[0], headers=None).status_code == 401
        wrong = post(http, tiles[0], headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert http.post("/api/v1/alerts/1/ack", json={"by": "x"}).status_code == 401
        assert http.post("/api/v1/models/activate", json={"run": str(tile_run)}).status_code == 401
        assert http.get("/api/v1/inspections").status_code == 200  # reads are open without --read-token
        assert http.post("/api/v1/inspections/1/review", json={"status": "confirmed"}, headers=AUTH).status_code == 404
        assert http.post("/api/v1/inspections/1/review", content=b"{not json", headers={
            **AUTH, "Content-Type": "application/json"}).status_code == 422
    with running(settings_for(tmp_path / "ro", tile_run, read_token=True), inspector=inspector) as server, \
            server.client() as http:
        assert http.get("/api/v1/inspections").status_code == 401
        assert http.get("/api/v1/inspections", headers=AUTH).status_code == 200
        assert http.get("/healthz").status_code == 200


def test_bad_uploads_are_refused_by_name_and_the_line_keeps_going(live, tiles, tmp_path):
    bomb = write_blank_png(tmp_path / "bomb.png", 30000, 30000)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 10)
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(400 * 1024))
    with live.client() as http:
        r = post(http, big)
        assert r.status_code == 413 and "0.25 MiB" in r.json()["detail"]
        r = post(http, text)
        assert r.status_code == 422 and "not an image" in r.json()["detail"] and "notes.png" in r.json()["detail"]
        r = post(http, bomb)
        assert r.status_code == 422 and "too many pixels" in r.json()["detail"]
        assert http.get("/api/v1/alerts").json()["items"] == []
        assert post(http, text, name="again.png").status_code == 422  # 3 of the last 10 frames: over 20 %
        alerts = http.get("/api/v1/alerts").json()["items"]
        assert [a["rule"] for a in alerts] == ["input_health"] and "3 of the last" in alerts[0]["message"]
        assert post(http, tiles[0]).status_code == 200  # still serving
        ack = http.post(f"/api/v1/alerts/{alerts[0]['id']}/ack", json={"by": "shift-lead"}, headers=AUTH)
        assert ack.status_code == 200
        assert http.get("/api/v1/alerts", params={"unacknowledged": True}).json()["items"] == []
        assert http.get("/api/v1/alerts").json()["items"][0]["acknowledged_by"] == "shift-lead"
        assert http.post(f"/api/v1/alerts/{alerts[0]['id']}/ack", headers=AUTH).status_code == 404
        assert http.get("/api/v1/inspections").json()["total"] == 1  # refused frames are not inspections
        metrics = http.get("/metrics").text
        assert 'aoiflow_errors_total{kind="unreadable"} 3.0' in metrics and 'kind="too_large"} 1.0' in metrics
    assert list((live.line.files.root / "tmp").iterdir()) == []  # refused uploads leave nothing behind


def test_file_names_cannot_leave_the_data_folder(live, tiles, tmp_path):
    with live.client() as http:
        for name in ("../../x.png", "..\\..\\evil.png", "/etc/passwd.png", "..", "a b/ü.png"):
            r = post(http, tiles[0], name=name)
            assert r.status_code == 200, r.text
            image = live.line.files.root / http.get(f"/api/v1/inspections/{r.json()['id']}").json()["image_path"]
            assert image.resolve().is_relative_to(live.line.files.root / "images") and image.is_file()
            assert r.json()["file_name"] == safe_name(name) and "/" not in r.json()["file_name"]
    assert not (tmp_path / "x.png").exists() and not (tmp_path.parent / "x.png").exists()
    assert safe_name("../../x.png") == "x.png" and safe_name("..") == "upload"


def test_a_full_queue_answers_503_with_retry_after(tmp_path, tile_run, inspector, tiles):
    class Slow:
        """The real inspector, 0.8 s slower per frame."""

        def __getattr__(self, name):
            return getattr(inspector, name)

        def predict_files(self, paths, **kw):
            time.sleep(0.8)
            return inspector.predict_files(paths, **kw)

    with (running(settings_for(tmp_path, tile_run, queue=1), inspector=Slow()) as server, server.client() as http,
          ThreadPoolExecutor(6) as pool):
        answers = list(pool.map(lambda p: post(http, p), tiles[:6]))
    codes = Counter(a.status_code for a in answers)
    assert codes[200] >= 2 and codes[503] >= 1 and codes[200] + codes[503] == 6
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "queue is full" in refused.json()["detail"]


def test_filters_pages_stats_reviews_and_csv(live, tiles):
    with live.client() as http:
        ids = [post(http, p, source="cam-a" if i % 2 else "cam-b").json()["id"] for i, p in enumerate(tiles[:6])]
        page = http.get("/api/v1/inspections", params={"limit": 4}).json()
        rest = http.get("/api/v1/inspections", params={"limit": 4, "offset": 4}).json()
        assert page["total"] == 6 and [i["id"] for i in page["items"] + rest["items"]] == ids[::-1]
        assert http.get("/api/v1/inspections", params={"source": "cam-a"}).json()["total"] == 3
        everything = page["items"] + rest["items"]
        median = sorted(i["a"] for i in everything)[3]
        high = http.get("/api/v1/inspections", params={"min_a": median}).json()
        assert high["total"] == sum(i["a"] >= median for i in everything)
        verdicts = Counter(i["verdict"] for i in everything)
        for verdict, n in verdicts.items():
            assert http.get("/api/v1/inspections", params={"verdict": verdict}).json()["total"] == n
        both = http.get("/api/v1/inspections", params=[("verdict", "ok"), ("verdict", "anomaly")]).json()
        assert both["total"] == 6
        assert http.get("/api/v1/inspections", params={"model_version": "other"}).json()["total"] == 0
        r = http.post(f"/api/v1/inspections/{ids[2]}/review", json={"status": "corrected", "label": "crack",
                                                                    "by": "ana"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["review_label"] == "crack"
        assert http.get("/api/v1/inspections", params={"unreviewed": True}).json()["total"] == 5
        assert [i["id"] for i in http.get("/api/v1/inspections", params={"review_status": "corrected"}).json()[
            "items"]] == [ids[2]]
        assert http.post(f"/api/v1/inspections/{ids[2]}/review", json={"status": "maybe"},
                         headers=AUTH).status_code == 422
        stats = http.get("/api/v1/stats", params={"bucket": "day"}).json()["buckets"]
        assert sum(b["total"] for b in stats) == 6 and sum(b["ok"] for b in stats) == verdicts["ok"]
        csv_text = http.get("/api/v1/export.csv").text.splitlines()
        assert csv_text[0].startswith("id,created_at") and len(csv_text) == 7
        assert len(http.get("/api/v1/export.csv", params={"source": "cam-b"}).text.splitlines()) == 4
    result = CliRunner().invoke(cli_app, ["replay", str(tiles[0].parent), "--to", live.url, "--token", TOKEN,
                                          "--concurrency", "2", "--fps", "50"])
    assert result.exit_code == 0, result.output
    assert "sent 4, ok 4 (stored 4), errors 0" in result.output and "p99" in result.output


def test_activating_a_model_mid_stream_drops_nothing(live, tiles, inspector, other_run):
    frames = tiles * 2
    with live.client() as http, ThreadPoolExecutor(2) as pool:
        first = [pool.submit(post, http, p) for p in frames[:6]]
        r = http.post("/api/v1/models/activate", json={"run": str(other_run)}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == inspector.version and r.json()["active"].startswith("run_b@")
        later = [pool.submit(post, http, p) for p in frames[6:12]]
        answers = [f.result() for f in first + later]
        assert [a.status_code for a in answers] == [200] * 12
        versions = Counter(a.json()["model_version"] for a in answers)
        assert set(versions) == {inspector.version, r.json()["active"]}
        assert all(a.json()["model_version"] == r.json()["active"] for a in answers[6:])
        listed = http.get("/api/v1/inspections", params={"limit": 100}).json()
        assert Counter(i["model_version"] for i in listed["items"]) == versions
        models = http.get("/api/v1/models").json()
        assert models["active"] == r.json()["active"]
        assert {m["version"] for m in models["models"]} == set(versions)
        bad = http.post("/api/v1/models/activate", json={"run": str(other_run.parent / "missing")}, headers=AUTH)
        assert bad.status_code == 422 and "missing" in bad.json()["detail"]


def test_watcher_judges_each_file_once_also_across_a_restart(tmp_path, tile_run, inspector, tiles):
    watch = tmp_path / "camera"
    (watch / "sub").mkdir(parents=True)
    settings = settings_for(tmp_path, tile_run, watch=watch)

    def judged() -> Counter:
        store = Store(settings.db_url)
        try:
            rows = store.query_inspections(limit=1000)
            assert all(r.source == "watch" for r in rows)
            return Counter(r.file_name for r in rows)
        finally:
            store.close()

    shutil.copy(tiles[0], watch / "before_start.png")
    with running(settings, inspector=inspector):
        shutil.copy(tiles[1], watch / "a.png")
        shutil.copy(tiles[5], watch / "sub" / "b.png")
        with open(watch / "slow.png", "wb") as f:  # written in two halves: judged once, whole
            data = tiles[2].read_bytes()
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.1)
            f.write(data[len(data) // 2:])
        (watch / "notes.txt").write_text("not an image suffix: ignored")
        wait_for(lambda: len(judged()) == 4, "4 watched files")
    assert judged() == Counter({"before_start.png": 1, "a.png": 1, "b.png": 1, "slow.png": 1})
    # While the service is down: two new files, and one claimed by a process that died mid-file.
    shutil.copy(tiles[6], watch / "while_down.png")
    shutil.copy(tiles[7], watch / "sub" / "while_down_2.png")
    crashed = watch / "crashed.png"
    shutil.copy(tiles[8], crashed)
    store = Store(settings.db_url)
    st = crashed.stat()
    assert store.claim_file(str(crashed), st.st_size, st.st_mtime_ns)
    store.close()
    with running(settings, inspector=inspector):
        wait_for(lambda: len(judged()) == 7, "7 watched files")
        time.sleep(0.6)  # longer than the settle time: any second judgement would show now
    assert set(judged().values()) == {1} and len(judged()) == 7
    store = Store(settings.db_url)
    assert store.unfinished_files() == []
    store.close()


def test_database_away_gives_503_and_nothing_judged_is_lost(tmp_path, tile_run, inspector, tiles):
    db_dir = tmp_path / "db"
    settings = settings_for(tmp_path, tile_run, db=f"sqlite:///{db_dir / 'line.db'}")
    with running(settings, inspector=inspector) as server, server.client() as http:
        assert post(http, tiles[0]).json()["stored"] is True
        db_dir.rename(tmp_path / "db_away")
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "unavailable" in ready.json()["detail"]
        kept = post(http, tiles[1])
        assert kept.status_code == 200 and kept.json()["stored"] is False and kept.json()["id"] is None
        assert kept.json()["verdict"] in ("ok", "anomaly")
        down = http.get("/api/v1/inspections")
        assert down.status_code == 503 and "unavailable" in down.json()["detail"] and "retry-after" in down.headers
        assert http.get("/readyz").json()["spooled"] == 1
        (tmp_path / "db_away").rename(db_dir)
        wait_for(lambda: http.get("/readyz").json()["spooled"] == 0, "the spool to be written")
        listed = http.get("/api/v1/inspections").json()
        assert listed["total"] == 2 and {i["file_name"] for i in listed["items"]} == {tiles[0].name, tiles[1].name}
        assert http.get("/readyz").status_code == 200


def test_postgresql_store(pg_schema_url, tmp_path, tile_run, inspector, tiles):
    settings = settings_for(tmp_path, tile_run, db=pg_schema_url)
    with running(settings, inspector=inspector) as server, server.client() as http:
        v = post(http, tiles[3], source="pg").json()
        assert v["stored"] is True
        listed = http.get("/api/v1/inspections", params={"source": "pg"}).json()
        assert listed["total"] == 1 and listed["items"][0]["a"] == pytest.approx(v["a"])
        assert http.get(v["image_url"]).content == tiles[3].read_bytes()


# -- descriptors and new kinds of anomaly -----------------------------------------------------

def _field(descriptor: list[float], name: str) -> float:
    return descriptor[DESCRIPTOR_FIELDS.index(name)]


def _scene(mask: np.ndarray, level: float = 0.2, background: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly map, image): the map is 5 on ``mask``, 0 elsewhere; the image ``level`` there,
    ``background`` elsewhere, with a little noise."""
    image = np.where(mask, level, background).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.01, mask.shape).astype(np.float32)
    return np.where(mask, 5.0, 0.0).astype(np.float32), image


def test_descriptor_known_answers():
    bar = np.zeros((128, 128), bool)
    bar[60:64, 20:100] = True  # 80 x 4, centroid (59.5, 61.5)
    d = map_descriptor(*_scene(bar), a=10.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    assert len(d) == len(DESCRIPTOR_FIELDS) and all(math.isfinite(v) for v in d)
    assert _field(d, "asinh_a") == pytest.approx(math.asinh(10.0))
    assert _field(d, "log_map_max") == pytest.approx(math.log1p(5.0 / 2.0))
    assert _field(d, "log_area_share") == pytest.approx(math.log10(320 / 128**2 + 1e-4))
    assert (_field(d, "solidity"), _field(d, "fill"), _field(d, "orientation")) == pytest.approx((1.0, 1.0, 0.0))
    assert _field(d, "centre_distance") == pytest.approx(math.hypot(4.0, 2.0) / (math.hypot(128, 128) / 2))
    assert _field(d, "contrast") < -3 and abs(_field(d, "texture")) < 0.3  # dark, as noisy as around it
    upright = map_descriptor(*_scene(bar.T), a=10.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    assert _field(upright, "orientation") == pytest.approx(90.0)
    bright = map_descriptor(*_scene(bar, level=0.8), a=10.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    assert _field(bright, "contrast") == pytest.approx(-_field(d, "contrast"), rel=0.05)

    ell = np.zeros((128, 128), bool)
    ell[40:60, 40:44] = True
    ell[56:60, 44:60] = True  # an L in a 20 x 20 box: 144 pixels
    d = map_descriptor(*_scene(ell), a=10.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    assert _field(d, "fill") == pytest.approx(144 / 400) and 0.4 < _field(d, "solidity") < 0.65


def test_descriptor_of_a_passing_part_and_of_a_large_image():
    flat = np.random.default_rng(1).uniform(0, 0.4, (96, 128)).astype(np.float32)  # nothing over 1.0
    d = map_descriptor(flat, None, a=-0.7, pixel_threshold=1.0, map_scale=2.0, input_size=32)
    assert all(math.isfinite(v) for v in d) and _field(d, "asinh_a") == pytest.approx(math.asinh(-0.7))
    assert (_field(d, "contrast"), _field(d, "texture")) == (0.0, 0.0)  # no image, no intensity features
    disc = np.zeros((400, 400), np.uint8)
    cv2.circle(disc, (300, 120), 30, 1, -1)
    small = map_descriptor(*_scene(disc > 0), a=5.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    big_mask = cv2.resize(disc, (2000, 2000), interpolation=cv2.INTER_NEAREST) > 0  # reduced to 512 first
    big = map_descriptor(*_scene(big_mask), a=5.0, pixel_threshold=1.0, map_scale=2.0, input_size=128)
    assert _field(small, "fill") == pytest.approx(math.pi * 30**2 / 61**2, abs=0.01)  # a disc in its box
    same = ("asinh_a", "log_map_max", "log_area_share", "solidity", "fill", "centre_distance")  # not a disc's
    assert [_field(big, f) for f in same] == pytest.approx([_field(small, f) for f in same], abs=0.02)  # orientation
    assert is_current(small) and not is_current([1.0] * 6) and not is_current(None)


def test_known_kinds_come_from_verdicts_reviews_and_passing_parts(tmp_path):
    label = lambda decision, verdict_, status=None, text=None: sample_label(
        DescriptorSample([0.0], decision, verdict_, status, text))
    assert label("anomalous", "defect:crack") == "crack"  # the supervised model named it
    assert label("anomalous", "defect:crack", "corrected", "dent") == "dent"  # a person's label wins
    assert label("anomalous", "defect:crack", "confirmed") == "crack"
    assert label("anomalous", "anomaly", "rejected") == NORMAL_KIND  # a false alarm
    assert label("normal", "ok") == NORMAL_KIND
    for unnamed in (label("anomalous", "anomaly"), label("anomalous", "unknown_anomaly"),
                    label("anomalous", "anomaly", "corrected", "dent, scratch"),
                    label("anomalous", "anomaly", "confirmed", "anomaly")):
        assert unnamed is None

    rng = np.random.default_rng(2)
    n = len(DESCRIPTOR_FIELDS)
    rows = [("normal", "ok", None, None, rng.normal(0, 1, n)) for _ in range(12)]
    rows += [("anomalous", "defect:crack", None, None, rng.normal(8, 1, n)) for _ in range(4)]
    rows += [("anomalous", "anomaly", "corrected", "dent", rng.normal(-8, 1, n)) for _ in range(3)]
    rows += [("anomalous", "anomaly", None, None, rng.normal(20, 1, n)) for _ in range(5)]  # unnamed: judged
    rows += [("anomalous", "defect:crack", None, None, rng.normal(8, 1, 6)) for _ in range(9)]  # legacy descriptor
    store = Store.sqlite(tmp_path / "line.db")
    try:
        store.add_inspections([InspectionRecord(source="t", file_name="x.png", a=0.0, r=0.0, l=0.0, threshold=1.0,
                                                decision=d, verdict=v, review_status=st, review_label=lab,
                                                model_version="m", descriptor=x.tolist())
                               for d, v, st, lab, x in rows])
        known = known_kinds_from_store(store, min_samples=4, min_normals=10)
        assert known.names == ["crack", NORMAL_KIND] and known.dim == n  # dent has 3 < 4 parts
        assert known_kinds_from_store(store, passing=9, min_samples=4, min_normals=10) is None  # too few normals
    finally:
        store.close()


class MapFromImage:
    """The real inspector (reading, checks, versions, the line's path) with a scripted model, so the
    test knows what every part looks like: the anomaly map is 20 x how far each pixel is from
    mid-grey, A its maximum. A grey frame with a little noise passes (A about 1); a dark spot or
    a bright scratch is flagged (A 4 and 5)."""

    threshold = 2.0
    map_scale = 8.0
    calibration = SimpleNamespace(pixel_threshold=2.0, threshold=2.0)

    def __init__(self, inspector: Inspector) -> None:
        self._inspector = inspector

    def __getattr__(self, name):
        return getattr(self._inspector, name)

    def predict_files(self, paths, **kw):
        for pred in self._inspector.predict_files(paths, **kw):
            if pred.status == "ok":
                pred.anomaly_map = 20 * np.abs(pred.original.mean(axis=2) - 0.5)
                pred.a = float(pred.anomaly_map.max())
                pred.decision = verdict(pred.a, self.threshold)
                pred.verdict = "anomaly" if pred.decision == "anomalous" else "ok"
            yield pred


def _part(folder: Path, name: str, rng: np.random.Generator, draw=None) -> Path:
    """A 64 x 64 grey frame with noise sd 0.02 (8-bit), ``draw(image)`` adding its defect."""
    image = np.clip(0.5 + rng.normal(0, 0.02, (64, 64)), 0, 1)
    if draw is not None:
        draw(image)
    path = folder / f"{name}.png"
    cv2.imwrite(str(path), (image * 255).round().astype(np.uint8))
    return path


def _spot(rng: np.random.Generator):
    centre, radius = (int(rng.integers(16, 48)), int(rng.integers(16, 48))), int(rng.integers(4, 7))
    return lambda image: cv2.circle(image, centre, radius, 0.3, -1)


def _scratch(rng: np.random.Generator):
    x, y = int(rng.integers(8, 24)), int(rng.integers(12, 52))
    return lambda image: cv2.rectangle(image, (x, y), (x + 31, y + 1), 0.75, -1)


def test_a_new_kind_of_anomaly_raises_one_alert_with_its_evidence(tmp_path, tile_run, inspector):
    rng = np.random.default_rng(11)
    frames = tmp_path / "frames"
    frames.mkdir()
    spots = [_part(frames, f"spot{i}", rng, _spot(rng)) for i in range(5)]
    normals = [_part(frames, f"good{i}", rng) for i in range(10)]
    scratches = [_part(frames, f"scratch{i}", rng, _scratch(rng)) for i in range(5)]
    settings = settings_for(tmp_path, tile_run, new_kind_k=3, new_kind_window=50, new_kind_min_samples=4,
                            new_kind_min_normals=8, new_kind_refit_every=1)
    with running(settings, inspector=MapFromImage(inspector)) as server, server.client() as http:
        # Spots first: no reference of normal yet, so the rule waits; then a person names them.
        for path in spots:
            v = post(http, path).json()
            assert v["decision"] == "anomalous" and v["alerts"] == []
            review = http.post(f"/api/v1/inspections/{v['id']}/review", json={"status": "corrected", "label": "spot"},
                               headers=AUTH)
            assert review.status_code == 200
        assert all(post(http, path).json()["decision"] == "normal" for path in normals)
        rule = server.line.alerts.new_kind  # refitted from the store on its own thread
        wait_for(lambda: rule.known is not None and rule.known.names == ["normal", "spot"], "the known kinds")
        answers = [post(http, path).json() for path in scratches]
        assert all(a["decision"] == "anomalous" for a in answers)
        ids = [a["id"] for a in answers]
        key = f"new_kind:{ids[0]}"
        assert [a["alerts"] for a in answers] == [[], [], [key], [], []]  # the third alike part; then quiet
        assert post(http, _part(frames, "spot_again", rng, _spot(rng))).json()["alerts"] == []  # a known kind

        (alert,) = http.get("/api/v1/alerts").json()["items"]
        assert (alert["key"], alert["rule"], alert["evidence"]) == (key, "new_kind", ids[:3])
        assert "spot" in alert["message"] and NORMAL_KIND in alert["message"]
        assert [(m["id"], m["a"]) for m in alert["details"]["members"]] == [(a["id"], a["a"]) for a in answers[:3]]
        assert alert["evidence_urls"] == [f"/api/v1/inspections/{i}" for i in ids[:3]]
        for url, member in zip(alert["evidence_urls"], alert["details"]["members"]):
            evidence = http.get(url).json()  # its scores, image and overlay (the map)
            assert (evidence["verdict"], evidence["a"]) == ("anomaly", member["a"])
            for link in (evidence["image_url"], evidence["overlay_url"]):
                assert http.get(link).status_code == 200
        ack = http.post(f"/api/v1/alerts/{alert['id']}/ack", json={"by": "shift-lead"}, headers=AUTH)
        assert ack.status_code == 200
        assert http.get("/api/v1/alerts", params={"unacknowledged": True}).json()["items"] == []
        assert http.post(f"/api/v1/alerts/{alert['id']}/ack", headers=AUTH).status_code == 404
