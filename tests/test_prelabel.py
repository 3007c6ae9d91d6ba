import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from aoiflow import data
from aoiflow.localisation import box_iou, edits_needed, pro_score
from aoiflow.predict import Inspector, Prediction
from aoiflow.prelabel import LabelledImage, RegionSettings, default_region_settings, find_regions, prelabel_folder
from aoiflow.labelformats import Writers
from aoiflow.runs import RunError
from aoiflow.train import fit


def _disk_map(h=100, w=120, cy=50, cx=60, radius=15):
    yy, xx = np.mgrid[:h, :w]
    amap = np.zeros((h, w), np.float32)
    amap[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1.0
    return amap


def test_regions_polygon_box_area_and_scores():
    amap = _disk_map()
    amap[5, 5] = 0.9  # a one-pixel speck
    amap[80:100, 0:10] = 0.7  # a region touching the border
    regions = find_regions(amap, RegionSettings(threshold=0.5, min_area=4))
    assert len(regions) == 2  # the speck is below min_area
    disk, edge = regions
    assert disk.id == 1 and disk.area == int((amap == 1).sum()) and disk.max_score == 1.0
    assert disk.box == (46, 36, 74, 64) and len(disk.polygon) >= 6
    assert edge.box == (0, 80, 9, 99) and edge.mean_score == pytest.approx(0.7)
    assert find_regions(np.zeros((10, 10)), RegionSettings(0.5)) == []


def test_opening_removes_thin_lines_and_closing_joins_fragments():
    amap = np.zeros((60, 60), np.float32)
    amap[30, 5:55] = 1.0  # 1-pixel-wide line
    assert len(find_regions(amap, RegionSettings(0.5, min_area=1))) == 1
    assert find_regions(amap, RegionSettings(0.5, min_area=1, opening=1)) == []
    amap[:] = 0
    amap[10:20, 10:20] = amap[10:20, 22:32] = 1.0
    assert len(find_regions(amap, RegionSettings(0.5, min_area=1))) == 2
    assert len(find_regions(amap, RegionSettings(0.5, min_area=1, closing=2))) == 1


def _item(tmp_path, amap, decision="anomalous", name="img.png"):
    h, w = amap.shape
    path = tmp_path / "images" / name
    path.parent.mkdir(exist_ok=True)
    Image.fromarray((amap * 200).astype(np.uint8)).save(path)
    pred = Prediction(path, "ok", r=0.1, l=0.1, a=5.0, decision=decision, anomaly_map=amap,
                      original=np.repeat(amap[..., None], 1, 2))
    regions = find_regions(amap, RegionSettings(0.5, 1)) if decision == "anomalous" else []
    return LabelledImage(path, w, h, pred, regions)


def test_every_format_is_readable_by_its_tools(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is a test dependency")
    from pycocotools.coco import COCO

    items = [_item(tmp_path, _disk_map(), name="a.png"), _item(tmp_path, np.zeros((100, 120), np.float32), "normal", "b.png")]
    out = tmp_path / "labels"
    w = Writers(out, tmp_path / "images", ["labelme", "voc", "coco", "yolo", "mask"], "defect")
    for it in items:
        w.write_image(it)
    w.finish()
    truth = items[0].regions[0].mask

    lm = json.loads((out / "labelme" / "a.json").read_text())
    assert lm["imageWidth"] == 120 and lm["shapes"][0]["shape_type"] == "polygon"
    assert (out / "labelme" / lm["imagePath"]).resolve() == items[0].path.resolve()
    assert json.loads((out / "labelme" / "b.json").read_text())["shapes"] == []

    voc = ET.parse(out / "voc" / "a.xml").getroot()
    box = [int(voc.find(f"object/bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert box == [47, 37, 75, 65] and voc.find("size/width").text == "120"
    assert ET.parse(out / "voc" / "b.xml").getroot().find("object") is None

    coco = COCO(str(out / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 1
    m = coco.annToMask(coco.loadAnns(coco.getAnnIds())[0]).astype(bool)
    assert (m & truth).sum() / (m | truth).sum() > 0.95

    line = (out / "yolo" / "labels" / "a.txt").read_text().split()
    cx, cy, bw, bh = map(float, line[1:])
    assert line[0] == "0" and cx == pytest.approx(60.5 / 120, abs=0.01) and bw == pytest.approx(29 / 120, abs=1e-3)
    assert (out / "yolo" / "labels" / "b.txt").read_text() == ""
    assert "0: defect" in (out / "yolo" / "data.yaml").read_text()

    png = np.array(Image.open(out / "mask" / "a.png")) > 0
    assert np.array_equal(png, truth) and not np.array(Image.open(out / "mask" / "b.png")).any()


def test_localisation_measures():
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and box_iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    # one exact match, one poor match (adjust), one extra prediction (delete), one missed truth (add)
    ious = np.array([[0.9, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.05]])
    assert edits_needed(ious) == 3  # adjust the 0.3 match; delete and add for the 0.05 pair
    assert edits_needed(np.zeros((0, 4))) == 4 and edits_needed(np.zeros((2, 0))) == 2
    truth = _disk_map() > 0
    perfect = pro_score([truth.astype(float)], [truth])
    reversed_ = pro_score([(~truth).astype(float)], [truth])
    noise = pro_score([np.random.default_rng(0).random(truth.shape)], [truth])
    assert perfect == pytest.approx(1.0) and reversed_ == pytest.approx(0.0, abs=1e-6)
    assert 0.1 < noise < 0.2  # random scores: mean overlap ~ FPR, area ~ 0.15 of 0.3


def test_prelabel_on_real_images_end_to_end(tile_subset, tmp_path, tiny_config):
    fit(tile_subset, tmp_path / "run", tiny_config, progress=False)
    inspector = Inspector.load(tmp_path / "run", threshold=-1e9)  # judge all anomalous: regions everywhere
    folder = tile_subset / "test"
    (folder / "crack" / "zz_empty.png").write_bytes(b"")
    settings = default_region_settings(inspector)
    summary = prelabel_folder(inspector, folder, tmp_path / "out", ["labelme", "coco", "voc", "yolo", "mask"],
                              settings, progress=False)
    assert summary["images"] == 10 and summary["anomalous"] == 10
    assert summary["errors"] == [(str(folder / "crack" / "zz_empty.png"), "file is empty (0 bytes)")]
    labelme = sorted((tmp_path / "out" / "labelme").glob("*.json"))
    assert len(labelme) == 10 and labelme[0].name.startswith("blowhole__")
    coco = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 10 and len(coco["annotations"]) == summary["regions"]
    sizes = {(i["width"], i["height"]) for i in coco["images"]}
    assert len(sizes) > 1  # real tiles differ in size; labels are in each image's own pixels
    assert len(list((tmp_path / "out" / "review").glob("*.png"))) == 10
    # a re-run is refused, then with overwrite replaces files whole: no temp files left behind
    with pytest.raises(data.DataLayoutError, match="--overwrite"):
        prelabel_folder(inspector, folder, tmp_path / "out", ["coco"], settings, review=False, progress=False)
    prelabel_folder(inspector, folder, tmp_path / "out", ["coco"], settings, review=False, progress=False,
                    overwrite=True)
    assert not (tmp_path / "out" / "labelme").exists()  # the first run's other formats went with it
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_prelabel_bad_setups(tile_subset, tmp_path, tiny_config):
    fit(tile_subset, tmp_path / "run", tiny_config, progress=False)
    inspector = Inspector.load(tmp_path / "run")
    inspector.calibration.pixel_threshold = None
    with pytest.raises(RunError, match="--pixel-threshold"):
        default_region_settings(inspector)
    settings = default_region_settings(inspector, pixel_threshold=0.5)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(data.DataLayoutError, match="not writable"):
        prelabel_folder(inspector, tile_subset / "test", blocked / "sub", ["coco"], settings, progress=False)
    with pytest.raises(ValueError, match="unknown label format"):
        prelabel_folder(inspector, tile_subset / "test", tmp_path / "o", ["pascal"], settings, progress=False)


def test_yolo_segmentation_polygons(tmp_path):
    item = _item(tmp_path, _disk_map())
    w = Writers(tmp_path / "labels", tmp_path / "images", ["yolo"], "defect", yolo_polygons=True)
    w.write_image(item)
    values = (tmp_path / "labels" / "yolo" / "labels" / "img.txt").read_text().split()
    coords = np.array(list(map(float, values[1:]))).reshape(-1, 2)
    assert values[0] == "0" and len(coords) >= 6 and coords.min() >= 0 and coords.max() <= 1
    assert coords[:, 0].mean() == pytest.approx(60.5 / 120, abs=0.02)
