"""Label sets read back as class masks (supervised.labels) and the simulated review (supervised.review)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aoiflow import data
from aoiflow.labelformats import Writers
from aoiflow.localisation import edits_needed
from aoiflow.predict import Prediction
from aoiflow.regions import LabelledImage, RegionSettings, find_regions
from aoiflow.supervised.labels import LabelError, read_labels
from aoiflow.supervised.review import ReviewEdits, label_regions, region_ious, scratch_edits, simulate_review

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.filterwarnings("ignore:.*label problem")


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _image(path: Path, h: int = 40, w: int = 50) -> Path:
    return _png(path, np.full((h, w), 100, np.uint8))


def _json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """bool (h, w), True on the inclusive pixel box."""
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _warned(labels, *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in labels.warnings)


# --- round trip through aoiflow's own writers ----------------------------------------------------

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two images (one nested, no defect) labelled in all five formats; a disk 'crack' and a
    rectangle 'scratch' on the first. Writers' first class is 'scratch', so COCO and YOLO list
    scratch first while LabelMe and VOC sort alphabetically."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    h, w = 100, 120
    yy, xx = np.mgrid[:h, :w]
    amap = np.zeros((h, w), np.float32)
    amap[(yy - 40) ** 2 + (xx - 35) ** 2 < 18**2] = 1.0
    amap[60:90, 70:110] = 1.0
    regions = find_regions(amap, RegionSettings(0.5, 1))
    for r in regions:
        r.label = "crack" if r.box[0] < 60 else "scratch"
    base = tmp / "images"
    items = []
    for name, regs in (("a.png", regions), ("sub/b.png", [])):
        path = _image(base / name, h, w)
        pred = Prediction(path, "ok", a=1.0, decision="anomalous", anomaly_map=amap, original=amap[..., None])
        items.append(LabelledImage(path, w, h, pred, regs))
    for out, polygons in ((tmp / "labels", False), (tmp / "seg", True)):
        writer = Writers(out, base, ["labelme", "voc", "coco", "yolo", "mask"], "scratch", yolo_polygons=polygons)
        for item in items:
            writer.write_image(item)
        writer.finish()
    return tmp, base, regions


def _expect(labels, regions, names: list[str], exact: bool) -> None:
    assert labels.class_names == names and len(labels) == 2
    assert labels.positives() == 1 and labels.negatives() == 1
    a = next(s for s in labels.samples if s.image_path.name == "a.png")
    b = next(s for s in labels.samples if s.image_path.name == "b.png")
    assert not b.mask().any() and b.image_path.parent.name == "sub"
    m = a.mask()
    assert m.shape == (100, 120) and m.dtype == np.uint8
    for r in regions:
        got = m == names.index(r.label) + 1
        if exact:  # boxes: the region's inclusive pixel box, exactly
            assert np.array_equal(got, _box(100, 120, *r.box)), r.label
        else:
            assert _iou(got, r.mask) > 0.9, r.label


@pytest.mark.parametrize("folder,fmt,names,exact", [
    ("labels/labelme", "labelme", ["crack", "scratch"], False),
    ("labels/coco", "coco", ["scratch", "crack"], False),
    ("seg/yolo", "yolo", ["scratch", "crack"], False),
    ("labels/voc", "voc", ["crack", "scratch"], True),
    ("labels/yolo", "yolo", ["scratch", "crack"], True),
])
def test_round_trip_of_aoiflows_writers(written, folder, fmt, names, exact):
    tmp, base, regions = written
    labels = read_labels(tmp / folder, base)
    assert labels.format == fmt and not labels.warnings, labels.warnings
    _expect(labels, regions, names, exact)


def test_round_trip_masks_and_polygons_are_pixel_faithful(written):
    tmp, base, regions = written
    masks = read_labels(tmp / "labels" / "mask", base)
    assert masks.format == "mask" and masks.class_names == ["defect"]
    a = next(s for s in masks.samples if s.image_path.name == "a.png")
    assert np.array_equal(a.mask(), (regions[0].mask | regions[1].mask).astype(np.uint8))
    # the rectangle's polygon is axis-aligned: drawn back exactly, in every polygon format
    for folder in ("labels/labelme", "labels/coco", "seg/yolo"):
        labels = read_labels(tmp / folder, base)
        m = next(s for s in labels.samples if s.image_path.name == "a.png").mask()
        rect = next(r for r in regions if r.label == "scratch")
        assert np.array_equal(m == labels.class_names.index("scratch") + 1, rect.mask), folder


def test_round_trip_without_images_argument_and_resized_masks(written):
    tmp = written[0]
    with pytest.raises(LabelError, match=r"a\.png, which is missing"):  # COCO names are relative to the images
        read_labels(tmp / "labels" / "coco" / "annotations.json")
    labelme = read_labels(tmp / "labels" / "labelme")  # imagePath is relative to the json
    yolo = read_labels(tmp / "labels" / "yolo")        # data.yaml 'path' names the image folder
    for labels in (labelme, yolo):
        a = next(s for s in labels.samples if s.image_path.name == "a.png")
        small = a.mask((50, 60))
        assert small.shape == (50, 60) and set(np.unique(small)) == {0, 1, 2}


def test_prelabel_output_folder_with_several_formats_is_refused(written):
    with pytest.raises(LabelError, match="several formats"):
        read_labels(written[0] / "labels")


# --- hand-written files: classes, shapes, sizes --------------------------------------------------

def test_labelme_shapes_and_inconsistent_class_names(tmp_path):
    _image(tmp_path / "img" / "one.png")
    _image(tmp_path / "img" / "two.png")
    shapes = [{"label": "Scratch", "shape_type": "polygon", "points": [[1, 1], [8, 1], [8, 6], [1, 6]]},
              {"label": "scratch ", "shape_type": "rectangle", "points": [[19, 14], [10, 5]]},
              {"label": "dent", "shape_type": "circle", "points": [[35, 25], [35, 30]]},
              {"label": "dent", "shape_type": "line", "points": [[0, 0], [5, 5]]}]
    # imagePath does not resolve beside the json: found in the image folder by file name
    _json(tmp_path / "lm" / "one.json", {"imagePath": "elsewhere/one.png", "imageHeight": 40, "imageWidth": 50,
                                         "shapes": shapes})
    _json(tmp_path / "lm" / "two.json", {"imagePath": "../img/two.png", "shapes": []})
    labels = read_labels(tmp_path / "lm", tmp_path / "img")
    assert labels.format == "labelme" and labels.class_names == ["dent", "Scratch"]
    assert labels.positives() == 1 and labels.negatives() == 1
    assert _warned(labels, "'Scratch'", "'scratch '", "one class")
    assert _warned(labels, "one.json", "line")  # not an area: skipped, named
    m = labels.samples[0].mask()
    assert np.array_equal(m == 2, _box(40, 50, 1, 1, 8, 6) | _box(40, 50, 10, 5, 19, 14))
    yy, xx = np.mgrid[:40, :50]
    disk = (yy - 25) ** 2 + (xx - 35) ** 2 <= 25
    assert _iou(m == 1, disk) > 0.9
    assert "2 images (1 with defects, 1 without), 2 class(es): dent, Scratch" in labels.summary()


def test_voc_classes_and_size_mismatch_scaled(tmp_path):
    _image(tmp_path / "img" / "p.png", 100, 200)
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "p.xml").write_text(
        "<annotation><filename>p.png</filename><size><width>100</width><height>50</height></size>"
        "<object><name>hole</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>"
        "<object><name>crack</name><bndbox><xmin>51</xmin><ymin>1</ymin><xmax>60</xmax><ymax>50</ymax>"
        "</bndbox></object>"
        "</annotation>")
    labels = read_labels(tmp_path / "voc", tmp_path / "img")
    assert labels.format == "voc" and labels.class_names == ["crack", "hole"]
    assert _warned(labels, "p.xml", "100x50", "200x100", "scaled")
    m = labels.samples[0].mask()
    assert np.array_equal(m == 2, _box(100, 200, 20, 10, 39, 29))
    assert np.array_equal(m == 1, _box(100, 200, 100, 0, 119, 99))


def test_yolo_names_boxes_polygons_and_negatives(tmp_path):
    for stem in ("a", "b"):
        _image(tmp_path / "img" / f"{stem}.jpg" if stem == "a" else tmp_path / "img" / f"{stem}.png", 40, 50)
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  0: crack\n  1: hole\n")
    (root / "labels" / "a.txt").write_text("1 0.3 0.25 0.2 0.25\n0 0.6 0.5 0.8 0.5 0.8 1.0 0.6 1.0\n")
    (root / "labels" / "b.txt").write_text("")
    labels = read_labels(root, tmp_path / "img")
    assert labels.format == "yolo" and labels.class_names == ["crack", "hole"]
    assert labels.positives() == 1 and labels.negatives() == 1 and not labels.warnings
    m = next(s for s in labels.samples if s.image_path.name == "a.jpg").mask()
    assert np.array_equal(m == 2, _box(40, 50, 10, 5, 19, 14))      # cx 15, cy 10, 10 x 10 pixels
    assert np.array_equal(m == 1, _box(40, 50, 30, 20, 39, 39))     # polygon x 30..40, y 20..40
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("background\nstain\nchip\n")  # a leading background entry is dropped
    assert read_labels(root, tmp_path / "img").class_names == ["stain", "chip"]


def test_yolo_unknown_class_id_names_file_and_line(tmp_path):
    _image(tmp_path / "img" / "a.png")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "classes.txt").write_text("crack\n")
    (tmp_path / "y" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(LabelError, match=r"a\.txt:2: class id 3 .*classes\.txt"):
        read_labels(tmp_path / "y", tmp_path / "img")
    with pytest.raises(LabelError, match="image folder"):
        read_labels(tmp_path / "y")


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


def test_coco_category_order_rle_bbox_negatives_and_missing_image(tmp_path):
    from pycocotools import mask as mask_utils

    _image(tmp_path / "img" / "a.png", 30, 40)
    _image(tmp_path / "img" / "b.png", 30, 40)
    blob = np.zeros((30, 40), np.uint8)
    blob[3:9, 20:33] = 1
    blob[5, 35] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    compressed["counts"] = compressed["counts"].decode("ascii")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                      {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                      {"id": 3, "file_name": "gone.png", "width": 40, "height": 30}],
           "categories": [{"id": 7, "name": "stain"}, {"id": 2, "name": "crack"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": compressed, "iscrowd": 1},
                           {"id": 2, "image_id": 1, "category_id": 7, "bbox": [2, 12, 10, 5], "segmentation": []},
                           {"id": 3, "image_id": 3, "category_id": 7, "bbox": [0, 0, 5, 5]}]}
    labels = read_labels(_json(tmp_path / "c" / "annotations.json", doc), tmp_path / "img")
    assert labels.format == "coco" and labels.class_names == ["stain", "crack"]
    assert len(labels) == 2 and labels.negatives() == 1
    assert _warned(labels, "annotations.json", "gone.png", "missing")
    m = labels.samples[0].mask()
    assert np.array_equal(m == 2, blob.astype(bool)) and np.array_equal(m == 1, _box(30, 40, 2, 12, 11, 16))
    doc["annotations"][0]["segmentation"] = _uncompressed_rle(blob)
    again = read_labels(_json(tmp_path / "d.json", doc), tmp_path / "img")
    assert np.array_equal(again.samples[0].mask(), m)
    doc["annotations"][1]["category_id"] = 5
    with pytest.raises(LabelError, match=r"e\.json: annotation 2 has category_id 5"):
        read_labels(_json(tmp_path / "e.json", doc), tmp_path / "img")


def test_coco_polygon_rasterises_by_pixel_centres_and_size_mismatch_scales(tmp_path):
    _image(tmp_path / "img" / "a.png", 60, 80)
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "crack"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                            "segmentation": [[5, 2.5, 10, 2.5, 10, 7.5, 5, 7.5]]}]}
    labels = read_labels(_json(tmp_path / "a.json", doc), tmp_path / "img")
    assert _warned(labels, "a.json", "40x30", "80x60", "scaled")
    # corner coordinates x 10..20, y 5..15 after scaling: pixels 10..19 x 5..14
    assert np.array_equal(labels.samples[0].mask() == 1, _box(60, 80, 10, 5, 19, 14))


def test_mask_pngs_index_and_binary(tmp_path):
    for stem in ("a", "b", "c"):
        _image(tmp_path / "img" / f"{stem}.png", 20, 30)
    idx = np.zeros((20, 30), np.uint8)
    idx[2:6, 2:6], idx[10:15, 20:25] = 1, 2
    _png(tmp_path / "m" / "a_mask.png", idx)
    _png(tmp_path / "m" / "b.png", np.zeros((20, 30), np.uint8))
    _png(tmp_path / "m" / "c.png", np.kron(idx, np.ones((2, 2), np.uint8)))  # twice the size
    (tmp_path / "m" / "classes.txt").write_text("_background_\nscratch\nhole\n")
    labels = read_labels(tmp_path / "m", tmp_path / "img")
    assert labels.format == "mask" and labels.class_names == ["scratch", "hole"]
    assert labels.positives() == 2 and labels.negatives() == 1
    assert _warned(labels, "c.png", "60x40", "30x20", "nearest")
    for s in labels.samples:
        assert np.array_equal(s.mask(), idx if s.positive else 0 * idx)
    binary = np.where(idx > 0, 255, 0).astype(np.uint8)
    _png(tmp_path / "bin" / "a.png", binary)
    labels = read_labels(tmp_path / "bin", tmp_path / "img")
    assert labels.class_names == ["defect"] and np.array_equal(labels.samples[0].mask(), (idx > 0).astype(np.uint8))
    _png(tmp_path / "m" / "a_mask.png", idx * 3)  # values 3 and 6: classes.txt names only two
    with pytest.raises(LabelError, match=r"a_mask\.png: mask value 3"):
        read_labels(tmp_path / "m", tmp_path / "img")


def test_mvtec_layout(tmp_path):
    root = tmp_path / "mv"
    _image(root / "train" / "good" / "t.png")
    _image(root / "test" / "good" / "g.png")
    _image(root / "test" / "crack" / "c.png")
    _image(root / "test" / "hole" / "h.png")  # no mask, no boxes: skipped with a warning
    _image(root / "test" / "pit" / "p.png")
    _png(root / "ground_truth" / "crack" / "c_mask.png", _box(40, 50, 5, 5, 9, 30).astype(np.uint8) * 255)
    (root / "annotations_bbox" / "pit").mkdir(parents=True)
    (root / "annotations_bbox" / "pit" / "p.txt").write_text("10 12 14 20 2\n")
    labels = read_labels(root)
    assert labels.format == "mvtec" and labels.class_names == ["crack", "pit"]
    assert labels.positives() == 2 and labels.negatives() == 1
    assert _warned(labels, "h.png", "no mask")
    masks = {s.image_path.name: s.mask() for s in labels.samples}
    assert np.array_equal(masks["c.png"], _box(40, 50, 5, 5, 9, 30) * np.uint8(1))
    assert np.array_equal(masks["p.png"], _box(40, 50, 10, 12, 14, 20) * np.uint8(2))
    assert read_labels(root, include_train_good=True).negatives() == 2
    typed = read_labels(root, box_types={2: "short"})
    assert typed.class_names == ["short", "crack"]


def test_real_magnetic_tile_samples(tmp_path):
    src = SHARED / "magnetictile_tile"
    if not src.is_dir():
        pytest.skip(f"{src} is missing")
    root = tmp_path / "tile"  # three real samples, linked (never copied into the repository)
    picks = [("test/blowhole", 0), ("test/crack", 0), ("test/good", 0)]
    for folder, i in picks:
        image = sorted((src / folder).iterdir())[i]
        (root / folder).mkdir(parents=True, exist_ok=True)
        os.symlink(image, root / folder / image.name)
        kind = Path(folder).name
        if kind != "good":
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            mask = f"ground_truth/{kind}/{image.stem}.png"
            os.symlink(src / mask, root / mask)
    labels = read_labels(root)
    assert labels.class_names == ["blowhole", "crack"] and labels.positives() == 2 and labels.negatives() == 1
    for s in labels.samples:
        m = s.mask()
        assert m.shape == data.read_image(s.image_path).shape[:2]
        if s.positive:
            k = labels.class_names.index(s.image_path.parent.name) + 1
            assert np.array_equal(m, data.read_mask(s.mask_path) * np.uint8(k))


# --- bad input -----------------------------------------------------------------------------------

def test_missing_image_and_out_of_bounds_polygon_are_warnings(tmp_path):
    _image(tmp_path / "img" / "ok.png", 40, 50)
    _json(tmp_path / "lm" / "gone.json", {"imagePath": "nothere.png", "shapes": []})
    _json(tmp_path / "lm" / "ok.json", {"imagePath": "ok.png", "shapes": [
        {"label": "crack", "points": [[40, 10], [150, 10], [150, 20], [40, 20]]},
        {"label": "crack", "points": [[-30, -30], [-20, -30], [-20, -20]]}]})
    labels = read_labels(tmp_path / "lm", tmp_path / "img")
    assert len(labels) == 1
    assert _warned(labels, "gone.json", "nothere.png", "missing")
    assert _warned(labels, "ok.json", "outside", "clipped")
    assert _warned(labels, "ok.json", "no area")  # wholly outside: dropped, not drawn on the border
    m = labels.samples[0].mask()
    assert np.array_equal(m == 1, _box(40, 50, 40, 10, 49, 20))


def test_malformed_files(tmp_path):
    _image(tmp_path / "img" / "ok.png")
    _json(tmp_path / "lm" / "ok.json", {"imagePath": "ok.png", "shapes": []})
    (tmp_path / "lm" / "broken.json").write_text('{"imagePath": ')
    labels = read_labels(tmp_path / "lm", tmp_path / "img", format="labelme")
    assert len(labels) == 1 and _warned(labels, "broken.json", "malformed JSON")
    (tmp_path / "lm" / "ok.json").unlink()
    with pytest.raises(LabelError, match=r"broken\.json: malformed JSON"):
        read_labels(tmp_path / "lm", tmp_path / "img")
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "annotations.json").write_text('{"images": [')
    with pytest.raises(LabelError, match=r"annotations\.json: malformed JSON"):
        read_labels(tmp_path / "coco", tmp_path / "img")
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "bad.xml").write_text("<annotation><filename>ok.png</filename>")
    with pytest.raises(LabelError, match=r"bad\.xml: malformed VOC XML"):
        read_labels(tmp_path / "voc", tmp_path / "img")
    (tmp_path / "voc" / "good.xml").write_text("<annotation><filename>ok.png</filename></annotation>")
    labels = read_labels(tmp_path / "voc", tmp_path / "img")
    assert len(labels) == 1 and labels.negatives() == 1 and _warned(labels, "bad.xml", "malformed")


def test_empty_or_unusable_sets(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelError, match="no label files"):
        read_labels(tmp_path / "empty")
    with pytest.raises(LabelError, match="not found"):
        read_labels(tmp_path / "nothing")
    _json(tmp_path / "lm" / "a.json", {"imagePath": "gone.png", "shapes": []})
    with pytest.raises(LabelError, match=r"no labelled images.*a\.json.*gone\.png"):
        read_labels(tmp_path / "lm")
    with pytest.raises(LabelError, match="unknown label format"):
        read_labels(tmp_path / "lm", format="pascal")


# --- simulated review ----------------------------------------------------------------------------

def test_simulate_review_known_answer():
    truth = np.zeros((40, 60), np.uint8)
    truth[2:8, 2:8] = 1       # missed: no prediction
    truth[15:25, 2:12] = 2    # loosely found: fixed
    truth[15:25, 30:40] = 1   # well found: accepted as predicted
    pre = np.zeros((40, 60), bool)
    pre[15:25, 9:14] = True   # IoU 30/120: under 0.5, over 0.1
    pre[14:25, 30:41] = True  # IoU 100/121, a slightly loose shape
    pre[32:36, 50:55] = True  # matches nothing: deleted
    reviewed, edits = simulate_review(pre, truth)
    assert edits == ReviewEdits(deleted=1, added=1, fixed=1, accepted=1) and edits.total == 3
    expected = truth.copy()
    expected[14:25, 30:41] = 1  # the confirmed pre-label keeps its shape, with the truth's class
    assert np.array_equal(reviewed, expected)
    pred_lab, pred_cls = label_regions(pre)
    truth_lab, truth_cls = label_regions(truth)
    assert edits.total == edits_needed(region_ious(pred_lab, len(pred_cls), truth_lab, len(truth_cls)))
    assert scratch_edits(truth) == 3 and edits.total <= scratch_edits(truth)
    _, strict = simulate_review(pre, truth, iou_ok=0.9)
    assert (strict.fixed, strict.accepted) == (2, 0)
    assert (edits + strict).total == 7


def test_review_regions_split_by_class_and_shapes_checked():
    truth = np.zeros((10, 10), np.uint8)
    truth[2:5, 2:5], truth[2:5, 5:8] = 1, 2  # touching, two kinds: two regions to draw
    assert scratch_edits(truth) == 2
    reviewed, edits = simulate_review(np.zeros((10, 10), np.uint8), truth)
    assert edits == ReviewEdits(added=2) and np.array_equal(reviewed, truth)
    _, none = simulate_review(np.zeros((10, 10)), np.zeros((10, 10), np.uint8))
    assert none.total == 0
    with pytest.raises(ValueError, match="same"):
        simulate_review(np.zeros((10, 11)), truth)
