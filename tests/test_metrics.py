"""Known-answer tests of the evaluation metrics on hand-made scores, maps, masks and boxes.

Each expected value is worked out by hand in a comment or computed by a deliberately plain
reference (pair counting, one threshold at a time), never by the code under test.
"""

from pathlib import Path

import numpy as np
import pytest

from aoiflow.evaluate import (
    Evaluation,
    ImageResult,
    image_metrics,
    localisation_metrics,
    pixel_auroc,
)
from aoiflow.localisation import box_iou, match, pro_score, read_boxes


def _evaluation(labels, a, threshold=0.5, kinds=None, r=None) -> Evaluation:
    """An Evaluation of N made-up images: scores ``a`` (also R and L unless ``r`` is given)."""
    kinds = kinds or ["good" if y == 0 else "defect" for y in labels]
    r = a if r is None else r
    per_image = [ImageResult(Path(f"img{i}.png"), y, k, float(ri), float(ai), float(ai), float(ai),
                             "anomalous" if ai > threshold else "normal", (8, 8))
                 for i, (y, k, ai, ri) in enumerate(zip(labels, kinds, a, r))]
    return Evaluation(per_image, threshold, [], 0.0, None)


def _pixel_inputs(labels, a, threshold=0.5, maps=None, masks=None, boxes=None, sizes=None,
                  pixel_threshold=None) -> dict:
    """``localisation_metrics`` arguments for N made-up images: maps (N, S, S), masks (bool or
    None), box files and original (H, W) sizes; an image scoring ``a`` above ``threshold`` is judged
    anomalous."""
    n = len(labels)
    maps = np.zeros((n, 8, 8), np.float32) if maps is None else np.asarray(maps, np.float32)
    return {"maps": maps, "masks": masks or [None] * n, "labels": list(labels),
            "judged": [v > threshold for v in a], "pixel_threshold": pixel_threshold,
            "box_files": boxes or [None] * n, "original_sizes": sizes or [maps.shape[1:]] * n}


def _pair_auroc(labels, scores) -> float:
    """AUROC as the share of (anomalous, normal) pairs ranked right, ties counting half."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


# ---- image level -----------------------------------------------------------------------------

LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
KINDS = ["good"] * 4 + ["crack", "crack", "hole", "hole"]
SCORES = [0.1, 0.4, 0.7, 0.8, 0.9, 0.3, 0.7, 0.95]  # one tie (0.7) across the classes


def test_image_metrics_on_hand_made_scores():
    ev = _evaluation(LABELS, SCORES, 0.5, KINDS, r=[-s for s in SCORES])
    m = image_metrics(ev)
    # pairs won: 0.9 -> 4, 0.3 -> 1, 0.7 -> 2 + tie 0.5, 0.95 -> 4: 11.5 of 16
    assert m["image_auroc"] == pytest.approx(11.5 / 16) == _pair_auroc(LABELS, SCORES)
    assert m["image_auroc_R_only"] == pytest.approx(1 - 11.5 / 16)  # R = -A ranks every pair the other way
    # above 0.5: normals 0.7, 0.8 (FP 2); anomalies 0.9, 0.7, 0.95 (TP 3), 0.3 missed (FN 1)
    assert m["f1_at_threshold"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["recall_at_threshold"] == 0.75 and m["false_positive_rate_at_threshold"] == 0.5
    crack, hole = m["per_defect_type"]["crack"], m["per_defect_type"]["hole"]
    assert crack["image_auroc"] == pytest.approx(5 / 8) and hole["image_auroc"] == pytest.approx(6.5 / 8)
    assert crack["recall_at_threshold"] == 0.5 and hole["recall_at_threshold"] == 1.0
    assert crack["count"] == hole["count"] == 2
    assert m["counts"] == {"normal": 4, "anomalous": 4, "skipped": 0}


def test_a_score_equal_to_the_threshold_is_normal():
    m = image_metrics(_evaluation(LABELS, SCORES, 0.7, KINDS))
    # above 0.7: normal 0.8 (FP 1); anomalies 0.9, 0.95 (TP 2); 0.3 and 0.7 missed (FN 2)
    assert m["f1_at_threshold"] == pytest.approx(4 / 7)
    assert m["recall_at_threshold"] == 0.5 and m["false_positive_rate_at_threshold"] == 0.25


def test_image_auroc_agrees_with_pair_counting_on_random_scores():
    rng = np.random.default_rng(4)
    labels = [0] * 30 + [1] * 20
    scores = np.round(rng.normal(0, 1, 50) + np.array(labels), 1)  # rounding makes ties
    m = image_metrics(_evaluation(labels, scores))
    assert m["image_auroc"] == pytest.approx(_pair_auroc(labels, scores), abs=1e-12)


# ---- pixel level -----------------------------------------------------------------------------

def test_pixel_auroc_on_hand_made_maps():
    normal = np.full((4, 4), 0.2)
    normal[3, 3] = 0.9
    defect = np.zeros((4, 4))
    defect[:2, :2] = [[0.95, 0.8], [0.9, 0.1]]
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    unmarked = np.ones((4, 4))  # a defect image whose mask is empty: nothing to localise, left out
    no_mask = np.full((4, 4), 0.5)  # a defect image without ground truth, left out
    maps = np.asarray([normal, defect, unmarked, no_mask], np.float32)
    masks = [np.zeros((4, 4), bool), mask, np.zeros((4, 4), bool), None]
    # 28 negatives (15 x 0.2, one 0.9, 12 x 0.0); positives 0.95 -> 28, 0.8 -> 27, 0.9 -> 27 + tie, 0.1 -> 12
    auroc, used = pixel_auroc(maps, masks, [0, 1, 1, 1])
    assert used == 2 and auroc == pytest.approx(94.5 / 112)
    y = np.r_[np.zeros(16), mask.ravel()]
    assert auroc == pytest.approx(_pair_auroc(y, np.r_[normal.ravel(), defect.ravel()]))


def test_pixel_auroc_needs_an_annotated_defect():
    maps = np.zeros((2, 8, 8), np.float32)
    assert pixel_auroc(maps, [np.zeros((8, 8), bool), None], [0, 1]) == (None, 0)


def test_pixel_metrics_refuse_inputs_not_one_per_map():
    maps = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="one entry per map"):
        pixel_auroc(maps, [None], [0, 1])
    with pytest.raises(ValueError, match="judged"):
        localisation_metrics(**{**_pixel_inputs([0, 1], [0, 1], maps=maps), "judged": [True]})


# ---- PRO -------------------------------------------------------------------------------------

def _reference_pro(maps, regions, max_fpr=0.3) -> float:
    """PRO from its definition: every distinct map value as a threshold (score >= t), the FPR over
    defect-free pixels, the mean overlap over the given regions, and the piecewise-linear curve
    integrated up to ``max_fpr``. ``regions``: per image, the list of its known regions."""
    defect = [np.logical_or.reduce([np.zeros(m.shape, bool), *rs]) for m, rs in zip(maps, regions)]
    negatives = np.concatenate([m[~d] for m, d in zip(maps, defect)])
    values = [m[r] for m, rs in zip(maps, regions) for r in rs]
    curve = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        curve.append(((negatives >= t).mean(), np.mean([(v >= t).mean() for v in values])))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(curve, curve[1:]):
        if f0 >= max_fpr:
            break
        if f1 > max_fpr:  # cut the last segment at max_fpr
            p1, f1 = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0), max_fpr
        area += (f1 - f0) * (p0 + p1) / 2
    return area / max_fpr


def _box(shape, y0, y1, x0, x1) -> np.ndarray:
    k = np.zeros(shape, bool)
    k[y0:y1, x0:x1] = True
    return k


def _pro_fixture():
    """Two normal 20x20 maps and one defect map: 900 distinct defect-free values; region C
    (270 px = 30 % of 900) holds exactly the 270 highest of them; region A (a 3x5 block and a
    1x15 row touching it at one corner: one 8-connected region) scores above them all."""
    rng = np.random.default_rng(0)
    negatives = rng.permutation(np.linspace(0.0, 1.0, 900))
    shape = (20, 20)
    region_c = _box(shape, 0, 15, 0, 18)
    region_a = _box(shape, 16, 19, 0, 5) | _box(shape, 19, 20, 5, 20)
    defect = np.zeros(shape)
    defect[region_c] = rng.permutation(np.sort(negatives)[-270:])
    defect[region_a] = 2.0
    defect[~(region_c | region_a)] = negatives[800:]  # 100 defect-free pixels here, 800 in the normals
    maps = [negatives[:400].reshape(shape), negatives[400:800].reshape(shape), defect]
    return maps, [[], [], [region_c, region_a]]


def test_pro_on_regions_with_a_known_curve():
    maps, regions = _pro_fixture()
    masks = [np.logical_or.reduce([np.zeros(m.shape, bool), *rs]) for m, rs in zip(maps, regions)]
    # at FPR f (f <= 0.3) region C overlaps f / 0.3 and region A fully: the area is (0.5 + 1) / 2.
    # A pixel-weighted overlap, or A split in two by 4-connectivity, would give another value.
    assert pro_score(maps, masks) == pytest.approx(0.75, abs=1e-9)
    assert _reference_pro(maps, regions) == pytest.approx(0.75, abs=1e-9)


def test_pro_agrees_with_the_reference_on_random_maps():
    rng = np.random.default_rng(1)
    shape = (24, 24)
    regions = [[], [_box(shape, 3, 9, 4, 12)],
               [_box(shape, 15, 18, 15, 18), _box(shape, 2, 4, 2, 4) | _box(shape, 4, 6, 4, 6)]]
    maps = [rng.random(shape) for _ in regions]
    for m, rs in zip(maps, regions):
        for r in rs:
            m[r] += rng.uniform(0.3, 0.9)  # regions overlap the normal range: the curve rises slowly
    masks = [np.logical_or.reduce([np.zeros(shape, bool), *rs]) for rs in regions]
    n_free = sum(int((~k).sum()) for k in masks)
    # pro_score joins its operating points by straight lines where the exact curve steps; the
    # two differ by at most half an FPR step (1 / n_free) per unit of overlap, over 0.3.
    assert pro_score(maps, masks) == pytest.approx(_reference_pro(maps, regions), abs=0.5 / (n_free * 0.3) + 1e-9)


def test_pro_leaves_out_defect_images_without_a_marked_region():
    maps, regions = _pro_fixture()
    masks = [np.logical_or.reduce([np.zeros(m.shape, bool), *rs]) for m, rs in zip(maps, regions)]
    labels = [0, 0, 1, 1]
    unmarked = np.full((20, 20), 5.0)  # a defect its empty mask does not show scores high: no false positive
    inputs = _pixel_inputs(labels, labels, maps=maps + [unmarked], masks=masks + [np.zeros((20, 20), bool)])
    assert localisation_metrics(**inputs)["pro_30"] == pytest.approx(0.75, abs=1e-9)


# ---- boxes -----------------------------------------------------------------------------------

def _blob_map(boxes, size, scale_xy) -> np.ndarray:
    """A map (size, size) that is 1 on each box (x0, y0, x1, y1, original pixels) shrunk by (sx, sy)."""
    sx, sy = scale_xy
    m = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        m[int(y0 // sy): int(y1 // sy) + 1, int(x0 // sx): int(x1 // sx) + 1] = 1.0
    return m


def _box_inputs(files, truths, size, hw, found, a):
    """Images with box files; image i's map marks truth boxes ``found[i]`` plus, where found[i]
    holds the string 'extra', one spurious blob in the top-left corner. The last image is normal."""
    sx, sy = hw[1] / size, hw[0] / size
    maps = []
    for truth, picks in zip(truths, found):
        boxes = [truth[k] for k in picks if k != "extra"]
        m = _blob_map(boxes, size, (sx, sy))
        if "extra" in picks:
            m[:3, :3] = 1.0
        maps.append(m)
    labels = [1] * (len(files) - 1) + [0]
    return _pixel_inputs(labels, a, 0.5, maps=maps, boxes=files, sizes=[hw] * len(files), pixel_threshold=0.5)


def _check_box_metrics(files, truths, size, hw):
    # image 0: 3 of 5 boxes found + a spurious blob; image 1: all 4 found; image 2: judged normal
    # (A below the threshold), so its blobs give no boxes; image 3: a normal image with a blob.
    found = [[0, 1, 2, "extra"], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5], ["extra"]]
    inputs = _box_inputs(files, truths, size, hw, found, a=[1.0, 1.0, 0.0, 1.0])
    out = localisation_metrics(**inputs)
    assert out["boxes_iou_0.5"] == {"precision": 7 / 9, "recall": 7 / 15, "f1": pytest.approx(2 * 7 / (9 + 15)),
                                    "predicted": 9, "truth": 15, "matched": 7}
    # edits: image 0 deletes 1 and adds 2; image 1 none; image 2 adds 6; image 3 deletes 1
    assert out["box_edits_per_image_with_prelabels"] == pytest.approx(10 / 4)
    assert out["box_edits_per_image_from_scratch"] == pytest.approx(15 / 4)


# Boxes of three DeepPCB test images (annotations_bbox/defect/<stem>.txt, "x1 y1 x2 y2 type").
PCB_BOXES = {
    "00041200_test": [(77, 315, 110, 373), (188, 254, 227, 281), (362, 303, 397, 334), (393, 375, 435, 403),
                      (229, 306, 259, 345)],
    "00041202_test": [(264, 571, 310, 606), (215, 365, 251, 401), (255, 164, 294, 197), (291, 412, 358, 442)],
    "00041204_test": [(281, 351, 340, 408), (404, 317, 433, 378), (202, 224, 240, 265), (217, 165, 252, 204),
                      (359, 167, 398, 200), (335, 38, 388, 65)],
}


def test_box_metrics_on_made_up_box_files(tmp_path):
    # DeepPCB's boxes with y halved, on 320 x 640 (H x W) images: swapped x/y scales would miss them
    truths = [[(x0, y0 // 2, x1, y1 // 2) for x0, y0, x1, y1 in boxes] for boxes in PCB_BOXES.values()]
    files = []
    for i, boxes in enumerate(truths):
        # corners in either order, comma- or space-separated, with a type column or without
        lines = [f"{x1},{y1},{x0},{y0}" if k % 2 else f"{x0} {y0} {x1} {y1} {k + 1}"
                 for k, (x0, y0, x1, y1) in enumerate(boxes)]
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text("\n".join(lines) + "\n")
        assert read_boxes(files[-1]) == boxes
    _check_box_metrics(files + [None], truths + [[]], 128, (320, 640))


def test_box_metrics_on_real_deeppcb_boxes(deeppcb_root):
    files = [deeppcb_root / "annotations_bbox" / "defect" / f"{stem}.txt" for stem in PCB_BOXES]
    truths = [read_boxes(f) for f in files]
    assert truths == list(PCB_BOXES.values())
    _check_box_metrics(files + [None], truths + [[]], 128, (640, 640))


def test_box_matching_on_real_deeppcb_boxes_shifted_by_known_amounts(deeppcb_root):
    truth = read_boxes(deeppcb_root / "annotations_bbox" / "defect" / "00041204_test.txt")
    # shifted right by d, an inclusive box w pixels wide keeps IoU (w - d) / (w + d):
    # d = w // 5 gives about 2/3 (a match at 0.5), d = w // 2 about 1/3 (no match at 0.5, one at 0.1)
    shifts = [(b[2] - b[0] + 1) // (5 if k % 3 else 2) for k, b in enumerate(truth)]
    pred = [(x0 + d, y0, x1 + d, y1) for (x0, y0, x1, y1), d in zip(truth, shifts)]
    for p, t, d in zip(pred, truth, shifts):
        w = t[2] - t[0] + 1
        assert box_iou(p, t) == pytest.approx((w - d) / (w + d))
    ious = np.array([[box_iou(p, t) for t in truth] for p in pred])
    assert sorted((i, j) for i, j, _ in match(ious, 0.5)) == [(1, 1), (2, 2), (4, 4), (5, 5)]
    assert len(match(ious, 0.1)) == 6
