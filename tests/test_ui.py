"""The operator pages in a real headless Chromium (Playwright, sync API) against a real uvicorn on
127.0.0.1 with a tiny trained run and a SQLite file: live updates over server-sent events, the
inspection table and detail, reviewing three parts with mouse and keys, label export (read back
with pycocotools and aoiflow's own readers), a training job from the page, alerts, models, and
the Label Studio round trip with known answers.

The module shares one server and one browser; the tests run in file order and build on each
other's state (frames ingested, reviews made). Screenshots of every page go to the pytest temp
folder, and into docs/ui/ when AOIFLOW_UPDATE_DOCS=1. Without /usr/bin/chromium the module is
skipped, or fails when AOIFLOW_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed (pip install 'aoiflow[service]')")
pytest.importorskip("playwright", reason="playwright is not installed (pip install 'aoiflow[service]')")

from conftest import _service_missing
from test_service import AUTH, TOKEN, post, running, settings_for, wait_for

from aoiflow.predict import Inspector
from aoiflow.service.events import EventHub
from aoiflow.service.store import AlertRecord, InspectionRecord, ReviewActionRecord, Store
from aoiflow.service.ui import labels as lab
from aoiflow.service.ui import labelstudio as ls
from aoiflow.train import fit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "ui"
UI_WAIT_MS = 20_000


# -- no browser needed ------------------------------------------------------------------------

def test_label_studio_coordinates_known_answers():
    # aoiflow pixels have centres at integers; Label Studio percent is from the top-left corner.
    assert ls.to_percent([[10, 20], [30, 20], [30, 40]], 200, 100) == [[5.25, 20.5], [15.25, 20.5], [15.25, 40.5]]
    assert ls.from_percent([[5.25, 20.5]], 200, 100) == [[10.0, 20.0]]
    export = [
        {"id": 1, "data": {"image": "http://x/api/v1/inspections/7/image"},
         "annotations": [{"id": 11, "completed_by": {"email": "ana@line"}, "result": [
             {"type": "rectanglelabels", "original_width": 200, "original_height": 100,
              "value": {"x": 10, "y": 20, "width": 5, "height": 10, "rectanglelabels": ["crack"]}},
             {"type": "choices", "value": {"choices": ["looked at"]}}]}]},
        {"id": 2, "data": {"inspection_id": 8}, "annotations": [{"result": [], "was_cancelled": False}]},
        {"id": 3, "data": {"inspection_id": 9}, "annotations": [{"result": [], "was_cancelled": True}]},
        {"id": 4, "data": {}, "annotations": [{"result": []}]},
    ]
    reviews, problems = ls.read_export(export, lambda iid: (200, 100))
    assert [r.inspection_id for r in reviews] == [7, 8]
    box = reviews[0].regions[0]
    # x from 10 % to 15 % of 200 px: corners 20 and 30, pixels 20..29; y 20 % to 30 % of 100 px.
    assert box["polygon"] == [[19.5, 19.5], [29.5, 19.5], [29.5, 29.5], [19.5, 29.5]]
    assert box["box"] == [20, 20, 29, 29] and box["area"] == 100 and box["kind"] == "crack"
    assert reviews[0].by == "labelstudio:ana@line" and reviews[1].regions == []
    assert len(problems) == 2 and "no annotation" in problems[0] and "no inspection id" in problems[1]
    with pytest.raises(lab.LabelProblem, match="list of tasks"):
        ls.read_export({"not": "tasks"}, lambda iid: (1, 1))


def test_reviewed_regions_are_checked_and_compared():
    r = lab.clean_region({"kind": "  blow  hole ", "polygon": [[-3, -3], [10.004, -1], [10, 8]]}, 12, 6)
    assert r["kind"] == "blow hole" and r["polygon"] == [[-0.5, -0.5], [10.0, -0.5], [10.0, 5.5]]
    assert r["box"] == [0, 0, 10, 5]
    for bad, why in [({"kind": "", "polygon": [[0, 0], [1, 0], [0, 1]]}, "kind"),
                     ({"kind": "a", "polygon": [[0, 0], [1, 1]]}, "3 to"),
                     ({"kind": "a", "polygon": [[0, 0], [1, 1], [2, 2]]}, "no area"),
                     ({"kind": "a", "polygon": [[0, 0], [1, float("nan")], [2, 0]]}, "finite")]:
        with pytest.raises(lab.LabelProblem, match=why):
            lab.clean_region(bad, 12, 6)
    pre = lab.editable_prelabels([{"kind": "anomaly", "box": [1, 1, 3, 2]}], 12, 6)
    assert pre[0]["polygon"] == [[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]]
    assert lab.review_status(pre, pre) == "confirmed" and lab.review_status(pre, []) == "rejected"
    moved = [{**pre[0], "polygon": [[0.6, 0.5], *pre[0]["polygon"][1:]]}]
    assert lab.review_status(pre, moved) == "corrected"
    assert lab.review_status(pre, [{**pre[0], "kind": "crack"}]) == "corrected"


def test_store_keeps_review_actions_and_orders_the_queue(tmp_path):
    with Store.sqlite(tmp_path / "a.db") as store:
        def add(a: float) -> int:
            return store.add_inspection(InspectionRecord(source="s", file_name="f.png", a=a, r=0.0, l=0.0,
                                                         threshold=1.0, decision="anomalous" if a > 1 else "normal",
                                                         verdict="anomaly" if a > 1 else "ok", model_version="m"))

        far, near, normal, middle = add(3.0), add(1.1), add(0.2), add(1.5)
        assert [r.id for r in store.review_queue()] == [near, middle, far] and store.count_review_queue() == 3
        assert store.add_review_action(ReviewActionRecord(inspection_id=near, action="delete_region",
                                                          payload={"region": 0}, by="ana")) is not None
        assert store.add_review_action(ReviewActionRecord(inspection_id=9999, action="open")) is None
        with pytest.raises(ValueError, match="snake_case"):
            ReviewActionRecord(inspection_id=near, action="Drop Table")
        regions = [{"kind": "crack", "polygon": [[0, 0], [4, 0], [4, 4]], "box": [0, 0, 4, 4], "area": 8}]
        assert store.save_review(near, "corrected", regions, ReviewActionRecord(inspection_id=near, action="accept"),
                                 label="crack", by="ana")
        assert not store.save_review(9999, "rejected", [])
        assert [r.id for r in store.review_queue()] == [middle, far]
        got = store.get_inspection(near)
        assert got.review_status == "corrected" and got.reviewed_regions == regions and got.reviewed_by == "ana"
        assert [a.action for a in store.list_review_actions(near)] == ["delete_region", "accept"]
        assert [r.id for r in store.reviewed_inspections()] == [near] and normal not in [r.id for r in store.review_queue()]


def test_event_hub_resumes_after_the_last_event_seen():
    hub = EventHub(keep=3)
    for n in range(5):
        hub.publish("inspection", {"n": n})

    async def scenario() -> list[int]:
        sub = hub.subscribe(last_id=3)  # ids 4 and 5 are kept and missed: given first
        hub.publish("alert", {"n": 5})
        await asyncio.sleep(0)
        got = [sub.queue.get_nowait()[0] for _ in range(sub.queue.qsize())]
        hub.unsubscribe(sub)
        return got

    assert asyncio.run(scenario()) == [4, 5, 6] and hub.last_id == 6 and hub.subscribers == 0


# -- the pages in Chromium --------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        _service_missing(f"{CHROMIUM} is missing (Debian package chromium); the UI tests drive a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tile_run(module_tile_subset, tmp_path_factory, module_tiny_config) -> Path:
    """A tiny run (as tests/test_service.py trains one)."""
    run = tmp_path_factory.mktemp("ui-run") / "run"
    fit(module_tile_subset, run, module_tiny_config, progress=False)
    return run


@pytest.fixture(scope="module")
def tiles(module_tile_subset) -> list[Path]:
    """Real tile images: 4 good and 6 defective."""
    test = module_tile_subset / "test"
    return sorted((test / "good").iterdir()) + sorted((test / "blowhole").iterdir()) + sorted((test / "crack").iterdir())


@pytest.fixture(scope="module")
def ui_inspector(tile_run, tiles) -> Inspector:
    """The tiny run with its threshold lowered to the third-lowest score of the tiles: most of them
    are flagged, so the review queue is long enough for every test here."""
    scores = sorted(p.a for p in Inspector.load(tile_run).predict_files(tiles))
    return Inspector.load(tile_run, threshold=(scores[1] + scores[2]) / 2)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tile_run, ui_inspector):
    with running(settings_for(tmp_path_factory.mktemp("ui"), tile_run), inspector=ui_inspector) as live:
        yield live


@pytest.fixture
def page(browser, server):
    """A fresh browser tab with the operator's name and token set, failing the test on any
    script error."""
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url, accept_downloads=True)
    context.add_init_script(f"localStorage.setItem('aoiflow.token', {json.dumps(TOKEN)});"
                            "localStorage.setItem('aoiflow.by', 'ana');")
    context.set_default_timeout(UI_WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()  # closes the event streams too, so the server can stop without waiting
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def ingested(server, tiles):
    """Every tile judged once (done by the live-page test while it watches, else here)."""
    def ensure() -> list[dict]:
        with server.client() as http:
            if http.get("/api/v1/inspections").json()["total"] < len(tiles):
                for p in tiles:
                    assert post(http, p).status_code == 200
            return http.get("/api/v1/inspections", params={"limit": 100}).json()["items"]
    return ensure


def snap(tab, shots: Path, name: str) -> None:
    tab.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def editor_data(tab) -> dict:
    return json.loads(tab.locator("#editor-data").text_content())


def test_live_page_shows_new_frames_without_reload(page, server, tiles, shots):
    from playwright.sync_api import expect

    page.goto("/")
    page.wait_for_selector("#live-state.on")  # the event stream is open
    page.evaluate("window.__notReloaded = true")
    assert page.locator("#frames li.frame").count() == 0
    with server.client() as http:
        for p in tiles:
            assert post(http, p, source="cam-1").status_code == 200
    # Locator waits, not wait_for_function: the page's Content-Security-Policy forbids the eval
    # that a polled string predicate needs (the check would pass only when true at once).
    try:
        expect(page.locator("#frames li.frame")).to_have_count(len(tiles), timeout=UI_WAIT_MS)
    except AssertionError as exc:  # say what the page showed, not only that it timed out
        raise AssertionError(f"{page.locator('#frames li.frame').count()} of {len(tiles)} frames shown; stream "
                             f"{page.locator('#live-state').inner_text()!r}; {exc}") from None
    assert page.evaluate("window.__notReloaded") is True
    newest = page.locator("#frames li.frame").first
    with server.client() as http:
        latest = http.get("/api/v1/inspections", params={"limit": 1}).json()["items"][0]
    assert newest.get_attribute("data-id") == str(latest["id"]) and latest["verdict"] in newest.inner_text()
    assert page.locator("#kpi-total").inner_text() == str(len(tiles))
    assert page.locator("#kpi-yield").inner_text().endswith("%")
    assert page.locator("#chart svg polyline.yield").count() == 1
    page.check("#overlay-toggle")  # thumbnails switch to the overlay PNGs
    assert "/overlay" in newest.locator("img").get_attribute("src")
    snap(page, shots, "live")


def test_inspection_table_filters_pages_and_detail(page, server, ingested, shots):
    items = ingested()
    flagged = [i for i in items if i["decision"] == "anomalous"]
    page.goto("/inspections")
    assert page.locator("table tbody tr").count() == len(items)
    page.select_option("#f-decision", "anomalous")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**decision=anomalous**")
    assert page.locator("table tbody tr").count() == len(flagged)
    assert f"of {len(flagged)}" in page.locator("#table-summary").inner_text()
    page.fill("#f-min", "not a number")
    page.click("button:has-text('Filter')")
    assert "min_a" in page.locator(".problem").inner_text()
    snap(page, shots, "inspections")
    target = max(flagged, key=lambda i: i["a"])
    page.goto(f"/inspections?decision=anomalous&min_a={target['a']}")
    page.click("table tbody tr a")
    page.wait_for_url(f"**/inspections/{target['id']}")
    assert page.locator("svg.histogram line.this").count() == 1 and page.locator("svg.histogram line.thr").count() == 1
    assert page.locator("svg.regions-view polygon.region").count() == len(target["regions"]) >= 1
    assert page.locator("img.overlay").count() == 1
    snap(page, shots, "inspection")


def test_reviewing_three_parts_with_keys_and_mouse(page, server, ingested, shots):
    ingested()
    with server.client() as http:
        queue = http.get("/api/v1/review/queue", params={"limit": 100}).json()
    assert queue["total"] >= 6
    uncertainty = [i["uncertainty"] for i in queue["items"]]
    assert uncertainty == sorted(uncertainty)  # most uncertain first

    # 1: accepted as it is, with the keyboard.
    page.goto("/review")
    first = editor_data(page)
    assert first["id"] == queue["items"][0]["id"] and first["regions"], "flagged parts come with pre-labels"
    page.locator("#editor").focus()
    with page.expect_navigation():
        page.keyboard.press("a")
    second = editor_data(page)
    assert second["id"] != first["id"]

    # 2: a corner dragged with the mouse, the region renamed, accepted with Enter.
    page.keyboard.press("]")  # select the first region: its corner handles appear
    handle = page.locator("#editor circle.handle[data-vertex='0']")
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    scale = page.evaluate("document.querySelector('#editor svg').getScreenCTM().a")  # screen px per image px
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 30, y + 20, steps=6)
    page.mouse.up()
    page.fill("#class-field", "crack")
    page.press("#class-field", "Enter")
    assert "crack" in page.locator("#region-list").inner_text()
    snap(page, shots, "review")
    page.locator("#editor").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    third = editor_data(page)
    assert third["id"] not in (first["id"], second["id"])

    # 3: a false alarm.
    with page.expect_navigation():
        page.keyboard.press("n")

    with server.client() as http:
        one, two, three = (http.get(f"/api/v1/inspections/{d['id']}").json() for d in (first, second, third))
        actions = http.get(f"/api/v1/inspections/{second['id']}/actions").json()["items"]
    assert one["review_status"] == "confirmed" and one["reviewed_by"] == "ana"
    assert [r["polygon"] for r in one["reviewed_regions"]] == [r["polygon"] for r in first["regions"]]
    assert two["review_status"] == "corrected" and two["reviewed_regions"][0]["kind"] == "crack"
    before, after = second["regions"][0]["polygon"][0], two["reviewed_regions"][0]["polygon"][0]
    tolerance = 1.0 / scale + 0.02  # the handle's centre is found to a screen pixel
    assert after[0] - before[0] == pytest.approx(30 / scale, abs=tolerance)
    assert after[1] - before[1] == pytest.approx(20 / scale, abs=tolerance)
    assert two["reviewed_regions"][0]["polygon"][1:] == second["regions"][0]["polygon"][1:]
    assert three["review_status"] == "rejected" and three["reviewed_regions"] == []
    kinds = [a["action"] for a in actions]
    assert kinds[0] == "open" and kinds[-1] == "accept" and "move_vertex" in kinds and "rename_region" in kinds
    moved = next(a for a in actions if a["action"] == "move_vertex")["payload"]
    assert moved["from"] == before and moved["to"] == after and all(a["by"] == "ana" for a in actions)


def test_export_coco_and_train_from_the_labels_page(page, server, shots, tmp_path):
    from pycocotools.coco import COCO

    from aoiflow.supervised.labels import read_labels

    page.goto("/labels")
    assert page.locator("text=Reviewed parts").count() == 1
    with page.expect_download() as download:
        page.click("a:has-text('COCO (zip)')")
    archive = tmp_path / "coco.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) >= 2
    names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert "crack" in names
    for image in coco.loadImgs(coco.getImgIds()):
        assert (tmp_path / "coco" / "images" / image["file_name"]).is_file()
    masks = coco.annToMask(coco.loadAnns(coco.getAnnIds())[0])
    assert masks.sum() > 0
    # The same labels as a training set, read back as `aoiflow supervise train` reads them.
    with server.client() as http:
        z = zipfile.ZipFile(io.BytesIO(http.get("/api/v1/labels/export", params={"format": "mask"}).content))
        z.extractall(tmp_path / "masks")
        for fmt in ("yolo", "labelme"):
            assert http.get("/api/v1/labels/export", params={"format": fmt}).status_code == 200
        assert http.get("/api/v1/labels/export", params={"format": "voc"}).status_code == 422
    label_set = read_labels(tmp_path / "masks" / "masks", tmp_path / "masks" / "images")
    assert len(label_set) == 3 and "crack" in label_set.class_names and label_set.positives() == 2
    assert read_labels(tmp_path / "coco").positives() == 2

    # A training job from the page: progress, then its test report.
    page.fill("#train-steps", "4")
    page.select_option("#train-size", "32")
    page.click("#train-start")
    page.wait_for_selector(".job .report-link", timeout=90_000)
    assert page.locator(".job progress").first.get_attribute("value") in ("1", "1.0")
    snap(page, shots, "labels")
    with page.expect_navigation():
        page.click(".job .report-link")
    assert "supervised evaluation" in page.content().lower()


def test_alerts_feed_evidence_and_acknowledge(page, server, ingested, tmp_path, shots):
    items = ingested()
    unreadable = tmp_path / "frame.png"
    unreadable.write_text("the camera sent noise\n")
    with server.client() as http:
        for n in range(3):  # 3 of the last 10 frames unreadable: over the 20 % of the test settings
            assert post(http, unreadable, name=f"noise-{n}.png").status_code == 422
        wait_for(lambda: http.get("/api/v1/alerts").json()["items"], "the input-health alert")
    evidence = [i["id"] for i in items if i["decision"] == "anomalous"][:5]
    server.line.store.get().add_alert(AlertRecord(
        key="test:rate", rule="defect_rate", severity="warning", kind="anomaly", evidence=evidence,
        message=f"{len(evidence)} flagged parts in a row (inserted by the test)"))
    page.goto("/alerts")
    rate = page.locator("li.alert", has_text="defect_rate")
    assert rate.locator(".gallery img").count() == len(evidence)
    health = page.locator("li.alert", has_text="input_health")
    assert "3 of the last" in health.inner_text()
    snap(page, shots, "alerts")
    health.locator("button.ack").click()
    page.wait_for_selector("li.alert.acked .acked-by")
    with server.client() as http:
        alerts = {a["rule"]: a for a in http.get("/api/v1/alerts").json()["items"]}
    assert alerts["input_health"]["acknowledged_by"] == "ana" and alerts["defect_rate"]["acknowledged_at"] is None


def test_label_studio_round_trip_on_the_line(server, ingested):
    ingested()
    with server.client() as http:
        tasks = http.get("/api/v1/labelstudio/tasks").json()
        assert len(tasks) >= 3 and all(t["predictions"][0]["result"] for t in tasks)
        config = http.get("/api/v1/labelstudio/config.xml").text
        assert '<PolygonLabels name="label" toName="image"' in config
        same, moved, normal = tasks[:3]
        result = moved["predictions"][0]["result"][0]
        w, h = result["original_width"], result["original_height"]
        # Known answer: a triangle at 10 %, 20 % / 50 %, 20 % / 50 %, 60 % of the image.
        triangle = {**result, "value": {"points": [[10, 20], [50, 20], [50, 60]], "polygonlabels": ["blowhole"]}}
        export = [{**same, "annotations": [{"id": 1, "completed_by": 3, "result": same["predictions"][0]["result"]}]},
                  {**moved, "annotations": [{"id": 2, "completed_by": 3, "result": [triangle]}]},
                  {**normal, "annotations": [{"id": 3, "completed_by": 3, "result": []}]}]
        r = http.post("/api/v1/labelstudio/import", json=export, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"imported": 3, "confirmed": 1, "corrected": 1, "rejected": 1, "problems": []}
        got = [http.get(f"/api/v1/inspections/{t['data']['inspection_id']}").json() for t in (same, moved, normal)]
        assert got[0]["review_status"] == "confirmed" and got[0]["reviewed_by"] == "labelstudio:3"
        expected = [[round(0.10 * w - 0.5, 2), round(0.20 * h - 0.5, 2)], [round(0.50 * w - 0.5, 2), round(0.20 * h - 0.5, 2)],
                    [round(0.50 * w - 0.5, 2), round(0.60 * h - 0.5, 2)]]
        assert got[1]["review_status"] == "corrected" and got[1]["reviewed_regions"][0]["polygon"] == expected
        assert got[1]["reviewed_regions"][0]["kind"] == "blowhole"
        assert got[2]["review_status"] == "rejected" and got[2]["reviewed_regions"] == []
        # Exported again, the reviewed ones are no longer review tasks; their actions say where they came from.
        again = {t["data"]["inspection_id"] for t in http.get("/api/v1/labelstudio/tasks").json()}
        assert not again & {t["data"]["inspection_id"] for t in (same, moved, normal)}
        actions = http.get(f"/api/v1/inspections/{moved['data']['inspection_id']}/actions").json()["items"]
        assert actions[-1]["action"] == "import_labelstudio" and actions[-1]["payload"]["status"] == "corrected"
        assert http.post("/api/v1/labelstudio/import", json=export).status_code == 401  # writes need the token


def add_history(server, items: list[dict], minutes: int = 45) -> int:
    """An earlier stretch of the line for the screenshots (a chart over time, more than one page):
    copies of the judged parts, one to three a minute over the last ``minutes``, stored through
    the store (the API stamps the time of arrival, the store takes any). Returns how many."""
    import random
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    store = server.line.store.get()
    judged = [store.get_inspection(i["id"]) for i in items]
    rng, now, copies = random.Random(3), datetime.now(UTC), []
    for k in range(2, minutes):
        for _ in range(rng.randint(1, 3)):
            copies.append(replace(rng.choice(judged), id=None, review_status=None, review_label=None,
                                  reviewed_by=None, reviewed_at=None, reviewed_regions=None,
                                  created_at=now - timedelta(minutes=k, seconds=rng.randrange(60))))
    store.add_inspections(copies)
    return len(copies)


def test_models_page_and_a_screenshot_of_every_page(page, server, ingested, shots):
    """Last: the pages in their final state (with an earlier stretch of the line added for the
    chart), saved for the docs when AOIFLOW_UPDATE_DOCS=1."""
    items = ingested()
    page.goto("/models")
    assert page.locator("td", has_text=server.line.version).count() == 1
    assert page.locator("text=test report").count() == 1  # the job trained on the Labels page
    page.click("button.activate >> nth=-1")  # the trained defect-kind model, with the active run
    page.wait_for_selector("#models-result:has-text('Active')")
    with server.client() as http:
        wait_for(lambda: http.get("/api/v1/models").json()["supervised"], "the defect-kind model to be recorded")
    assert add_history(server, items) > 40
    pages = {"live": "/", "inspections": "/inspections", "inspection":
             f"/inspections/{max((i for i in items if i['decision'] == 'anomalous'), key=lambda i: i['a'])['id']}",
             "review": "/review", "labels": "/labels", "alerts": "/alerts", "models": "/models"}
    for name, url in pages.items():
        page.goto(url)
        if name == "review":
            page.keyboard.press("]")  # a region selected: its corner handles show
        if name == "live":
            page.wait_for_selector("#live-state.on")
        wait_for(lambda: page.evaluate("Array.from(document.images).every(i => i.complete)"), f"{name}'s images")
        page.screenshot(path=str(shots / f"page-{name}.png"))
        assert page.locator("main h1, main h2").count() >= 1
    if os.environ.get("AOIFLOW_UPDATE_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for name in pages:
            shutil.copyfile(shots / f"page-{name}.png", DOCS / f"{name}.png")
