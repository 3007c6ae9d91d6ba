"""Labelling effort with and without pre-labels, by a scripted reviewer in the real review page.

    .venv/bin/python benchmarks/labelling_speed.py [--data DIR] [--run RUN] [--n 3] [--flag-all]
        [--out result.json]

A service (in-process uvicorn on 127.0.0.1, a SQLite file in a temporary folder) judges defective
test images that have ground-truth masks (--data, MVTec layout; default the magnetic tiles,
../shared/data/magnetictile_tile; the generated LED line is e.g. demo_out/surfaces with the run
demo_out/runs/ganomaly-ssim-ssim); the flagged ones are labelled twice in headless Chromium
(Playwright), in the same editor:

    pre-labels   /review?id=N&prelabels=1  the GANomaly pre-label outlines, corrected
    scratch      /review?id=N&scratch=1    the same editor with no region, everything drawn

The target is box-level ground truth: every connected region of the mask (at least 4 pixels) as a
box of the defect's kind (its folder name). The script keeps a pre-label whose box overlaps a
truth box with IoU >= 0.5 (renaming it when its kind differs), deletes the others (select +
Delete), draws a box for every truth region still missing (one drag; the kind typed once per
image), and accepts (A). It then reads the stored review back and checks it reached the target
(each truth box matched by a region of its kind at IoU >= 0.5, no region left over).

Reported per image and in total: interactions (clicks, drags, key presses, text entries; typed
characters apart) and the script's wall time from the editor being ready to the review being
stored, for both ways, and their ratio. A script is not a person: it never hesitates, searches,
zooms or misjudges, so its times measure the page, not a labeller; the interaction counts are the
part that carries over, under the stated strategy. Without --run a tiny run is trained first on a
small tile subset (about 20 s on two cores); --flag-all lowers the threshold below every chosen
image's score so that all are flagged (a tiny run flags few).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "magnetictile_tile"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TOKEN = "bench"
MIN_TRUTH_PIXELS = 4
KEEP_IOU = 0.5
SCRIPT_IS_NOT_A_PERSON = ("NOTE: a script is not a person. It never hesitates, searches the image, zooms or "
                          "misjudges a region; its times measure the page, not a labeller. The interaction counts "
                          "carry over only under the stated strategy (keep pre-labels at box IoU >= 0.5, delete "
                          "the rest, draw missing boxes).")


# -- truth and geometry ---------------------------------------------------------------------------

def truth_boxes(mask_path: Path) -> list[tuple[int, int, int, int]]:
    """Inclusive pixel boxes (x0, y0, x1, y1) of the mask's connected regions (value > 127)."""
    import cv2

    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8), connectivity=8)
    boxes = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= MIN_TRUTH_PIXELS:
            boxes.append((x, y, x + w - 1, y + h - 1))
    return boxes


def box_iou(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (_area(a) + _area(b) - inter)


def _area(r: tuple[int, ...] | list[int]) -> int:
    return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)


def polygon_box(polygon: list[list[float]], width: int, height: int) -> tuple[int, int, int, int]:
    import math

    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0 = min(max(math.ceil(min(xs)), 0), width - 1), min(max(math.ceil(min(ys)), 0), height - 1)
    return x0, y0, max(min(math.floor(max(xs)), width - 1), x0), max(min(math.floor(max(ys)), height - 1), y0)


def reached(stored: list[dict], truth: list[tuple[int, int, int, int]], kind: str) -> bool:
    """Each truth box matched one-to-one by a stored region of ``kind`` at box IoU >= 0.5, none left over."""
    from aoiflow.localisation import match

    if len(stored) != len(truth):
        return False
    if not truth:
        return True
    ious = np.array([[box_iou(s["box"], t) if s["kind"] == kind else 0.0 for t in truth] for s in stored])
    return len(match(ious, KEEP_IOU)) == len(truth)


# -- the scripted reviewer --------------------------------------------------------------------------

@dataclass
class Effort:
    clicks: int = 0
    drags: int = 0
    keys: int = 0
    texts: int = 0
    characters: int = 0
    seconds: float = 0.0
    reached: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def interactions(self) -> int:
        return self.clicks + self.drags + self.keys + self.texts


class Reviewer:
    """Drives the review page like a person would, counting what it does."""

    def __init__(self, page, effort: Effort) -> None:
        self.page, self.e = page, effort

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        return tuple(self.page.evaluate(
            "([x, y]) => { const s = document.querySelector('#editor svg'); const p = s.createSVGPoint();"
            " p.x = x; p.y = y; const q = p.matrixTransform(s.getScreenCTM()); return [q.x, q.y]; }", [x, y]))

    def regions(self) -> int:
        return self.page.locator("#region-list button[data-region]").count()

    def click_region(self, index: int) -> None:
        self.page.click(f"#region-list button[data-region='{index}']")
        self.e.clicks += 1

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.e.keys += 1

    def set_kind(self, kind: str) -> None:
        """Type the kind into the class field and press Enter (renames the selected region, or sets
        the kind of new boxes)."""
        self.page.fill("#class-field", kind)
        self.e.texts += 1
        self.e.characters += len(kind)
        self.page.press("#class-field", "Enter")
        self.e.keys += 1

    def draw_box(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = max((x1 - x0 + 1) / 2, 2.0), max((y1 - y0 + 1) / 2, 2.0)  # at least 4 px: a visible drag
        before = self.regions()
        a = self.to_screen(cx - half_w, cy - half_h)
        b = self.to_screen(cx + half_w, cy + half_h)
        self.page.mouse.move(*a)
        self.page.mouse.down()
        self.page.mouse.move(*b, steps=4)
        self.page.mouse.up()
        self.e.drags += 1
        if self.regions() == before + 1:
            return True
        self.e.notes.append(f"box {box} was not drawn (the drag started on a region)")
        self.key("Escape")
        return False

    def accept(self) -> None:
        self.page.locator("#editor").focus()
        with self.page.expect_navigation():
            self.key("a")


def review_one(page, base: str, item: dict, truth: list[tuple[int, int, int, int]], kind: str,
               scratch: bool) -> Effort:
    e = Effort()
    page.goto(f"{base}/review?id={item['id']}" + ("&scratch=1" if scratch else "&prelabels=1"))
    page.wait_for_selector("#editor svg")
    data = json.loads(page.locator("#editor-data").text_content())
    w, h = data["width"], data["height"]
    r = Reviewer(page, e)
    t0 = time.perf_counter()
    kept: set[int] = set()  # truth boxes covered by a kept pre-label
    doomed: list[int] = []
    for i, region in enumerate(data["regions"]):
        box = polygon_box(region["polygon"], w, h)
        best = max(((box_iou(box, t), j) for j, t in enumerate(truth) if j not in kept), default=(0.0, -1))
        if best[0] >= KEEP_IOU:
            kept.add(best[1])
            if region["kind"] != kind:
                r.click_region(i)
                r.set_kind(kind)
        else:
            doomed.append(i)
    for i in sorted(doomed, reverse=True):  # later indices first: deleting shifts those after
        r.click_region(i)
        r.key("Delete")
    missing = [t for j, t in enumerate(truth) if j not in kept]
    if missing:
        if page.input_value("#class-field") != kind:
            r.set_kind(kind)
        for t in missing:
            r.draw_box(t)
    r.accept()
    e.seconds = time.perf_counter() - t0
    return e


# -- setup --------------------------------------------------------------------------------------------

def choose_images(n: int, scan: int, root: Path = SHARED) -> list[tuple[Path, Path, str]]:
    """Up to ``scan`` defective test images with masks, round robin over the kinds (the test
    folders other than good), name order."""
    kinds = sorted(d.name for d in (root / "test").iterdir() if d.is_dir() and d.name != "good")
    lists = {k: sorted((root / "test" / k).iterdir()) for k in kinds}
    out, i = [], 0
    while len(out) < scan and any(i < len(v) for v in lists.values()):
        for k, files in lists.items():
            if i < len(files):
                mask = next((m for m in (root / "ground_truth" / k / f"{files[i].stem}{tail}.png" for tail in ("", "_mask"))
                             if m.is_file()), None)
                if mask is not None and truth_boxes(mask):
                    out.append((files[i], mask, k))
        i += 1
    return out[:scan]


def tiny_run(work: Path) -> Path:
    """A tiny run on 12 normal tile images (as the tests train one)."""
    import torch

    from aoiflow.config import build_config
    from aoiflow.train import fit

    torch.set_num_threads(2)
    data = work / "tile"
    (data / "train" / "good").mkdir(parents=True)
    for p in sorted((SHARED / "train" / "good").iterdir())[:12]:
        shutil.copy(p, data / "train" / "good" / p.name)
    config = build_config("ganomaly-ssim-ssim", overrides={
        "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
        "train": {"epochs": 2, "batch_size": 4, "seed": 3, "val_fraction": 0.25},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}})
    fit(data, work / "run", config, progress=False)
    return work / "run"


def serve(run: Path, data_dir: Path, threshold: float | None):
    import uvicorn

    from aoiflow.predict import Inspector
    from aoiflow.service.app import create_app
    from aoiflow.service.settings import ServiceSettings

    settings = ServiceSettings(run=run, data_dir=data_dir, token=TOKEN, threshold=threshold, overlays="anomalous")
    app = create_app(settings, inspector=Inspector.load(run, threshold))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the service did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="MVTec-layout folder with ground_truth masks "
                                                              "(default: the shared magnetic tiles)")
    ap.add_argument("--run", type=Path, help="a trained run (default: train a tiny one first, on the tiles)")
    ap.add_argument("--n", type=int, default=3, help="flagged images to label (a smoke run: 3)")
    ap.add_argument("--scan", type=int, default=15, help="defective images with masks to send to the line")
    ap.add_argument("--threshold", type=float, help="decision threshold on A (default: the run's)")
    ap.add_argument("--flag-all", action="store_true", help="threshold below every sent image's score")
    ap.add_argument("--out", type=Path, help="write the per-image results as JSON")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is missing (the shared tile images sit beside the checkout)")
    if args.run is None and args.data != SHARED:
        raise SystemExit("--data other than the shared tiles needs --run (a run trained on its train/good)")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} is missing (Debian package chromium)")

    import httpx
    from playwright.sync_api import sync_playwright

    from aoiflow.predict import Inspector

    work = Path(tempfile.mkdtemp(prefix="aoiflow-labelling-"))
    try:
        t0 = time.perf_counter()
        run = args.run or tiny_run(work)
        if not args.run:
            print(f"trained a tiny run in {time.perf_counter() - t0:.0f} s: {run}")
        images = choose_images(args.n, max(args.scan, args.n), args.data)
        threshold = args.threshold
        if args.flag_all:
            scores = [p.a for p in Inspector.load(run).predict_files([i for i, _, _ in images])]
            threshold = float(min(scores)) - 1e-3
            print(f"--flag-all: threshold lowered to {threshold:.4f} (the run's flags few of these images)")
        server, thread, base = serve(run, work / "line", threshold)
        jobs = []
        with httpx.Client(base_url=base, timeout=60) as http:
            for image, mask, kind in images:
                v = http.post("/api/v1/inspect", files={"file": (image.name, image.read_bytes())},
                              headers={"Authorization": f"Bearer {TOKEN}"}).json()
                if v["decision"] == "anomalous" and len(jobs) < args.n:
                    jobs.append((v, truth_boxes(mask), kind, image))
            print(f"sent {len(images)} defective images; {len(jobs)} flagged and labelled (of --n {args.n})")
            results = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(f"localStorage.setItem('aoiflow.token', '{TOKEN}');"
                                        "localStorage.setItem('aoiflow.by', 'script');")
                page = context.new_page()
                page.set_default_timeout(30_000)
                for n, (v, truth, kind, image) in enumerate(jobs):
                    row = {"inspection": v["id"], "image": image.name, "kind": kind, "truth_regions": len(truth),
                           "prelabels": len(v["regions"])}
                    # Alternate which way goes first, so a warm cache favours neither.
                    for scratch in ((True, False) if n % 2 else (False, True)):
                        e = review_one(page, base, v, truth, kind, scratch)
                        stored = http.get(f"/api/v1/inspections/{v['id']}").json()["reviewed_regions"] or []
                        e.reached = reached(stored, truth, kind)
                        row["scratch" if scratch else "prelabels_route"] = asdict(e) | {"interactions": e.interactions}
                    results.append(row)
                context.close()
                browser.close()
        server.should_exit = True
        thread.join(30)
        report(results, run, threshold)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], run: Path, threshold: float | None) -> None:
    print(f"\nrun {run}; threshold {'the run' + chr(39) + 's' if threshold is None else f'{threshold:.4f}'}; "
          f"target: box-level truth (regions >= {MIN_TRUTH_PIXELS} px), kept at box IoU >= {KEEP_IOU}")
    head = (f"{'image':<24}{'kind':<10}{'truth':>6}{'pre':>5} | {'pre-labels: acts':>17}{'s':>7}{'ok':>4}"
            f" | {'scratch: acts':>14}{'s':>7}{'ok':>4}")
    print(head)
    print("-" * len(head))
    tot = {"pre": [0, 0.0, 0], "scr": [0, 0.0, 0]}
    for r in results:
        a, b = r["prelabels_route"], r["scratch"]
        print(f"{r['image'][:23]:<24}{r['kind']:<10}{r['truth_regions']:>6}{r['prelabels']:>5} | "
              f"{a['interactions']:>17}{a['seconds']:>7.2f}{'yes' if a['reached'] else 'no':>4} | "
              f"{b['interactions']:>14}{b['seconds']:>7.2f}{'yes' if b['reached'] else 'no':>4}")
        for key, e in (("pre", a), ("scr", b)):
            tot[key][0] += e["interactions"]
            tot[key][1] += e["seconds"]
            tot[key][2] += e["reached"]
        for note in a["notes"] + b["notes"]:
            print(f"    note: {note}")
    n = len(results)
    if not n:
        print("no flagged image to label: try --flag-all or a stronger --run")
        print(SCRIPT_IS_NOT_A_PERSON)
        return
    (pa, ps, pr), (sa, ss, sr) = tot["pre"], tot["scr"]
    print("-" * len(head))
    print(f"total over {n} image(s): pre-labels {pa} interactions, {ps:.2f} s, reached {pr}/{n}; "
          f"scratch {sa} interactions, {ss:.2f} s, reached {sr}/{n}")
    ratio_a = f"{pa / sa:.2f}" if sa else "n/a"
    ratio_t = f"{ps / ss:.2f}" if ss else "n/a"
    print(f"ratio pre-labels / scratch: interactions {ratio_a}, script time {ratio_t} (below 1: pre-labels save work)")
    print(SCRIPT_IS_NOT_A_PERSON)


if __name__ == "__main__":
    sys.exit(main())
