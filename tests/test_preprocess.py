import csv

import cv2
import numpy as np
import pytest

from aoiflow.config import PreprocessConfig
from aoiflow.ledsynth import ALLOWED_TYPES, CANON, PKG, make_frame, make_led_dataset
from aoiflow.preprocess import SkippedFrame, preprocess_folder, preprocess_frame


def _true_corners(matrix: np.ndarray) -> np.ndarray:
    off = (CANON - PKG) / 2 - 0.5
    roi = np.array([[off, off], [off + PKG, off], [off + PKG, off + PKG], [off, off + PKG]])
    return roi @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize("angle", [-179.0, -135.5, -90.0, -44.0, -12.3, 0.0, 7.7, 45.0, 89.0, 121.0, 180.0])
def test_recovers_position_and_rotation(angle):
    rng = np.random.default_rng(int(abs(angle) * 10))
    frame, _, matrix = make_frame(int(rng.integers(1, 6)), None, rng, angle=angle)
    sm = preprocess_frame(frame, PreprocessConfig())
    side = PKG
    assert np.abs(sm.corners - _true_corners(matrix)).max() < 0.01 * side
    assert abs((sm.angle_deg - angle + 180) % 360 - 180) < 1.0
    assert sm.image.shape == (256, 256) and sm.inside.shape == (256, 256)


def test_masks_stay_aligned_through_the_warp():
    rng = np.random.default_rng(3)
    frame, mask, _ = make_frame(1, "unclean", rng, angle=33.0)
    sm = preprocess_frame(frame, PreprocessConfig())
    warped = sm.warp_mask(mask)
    assert warped.any()
    # the defect darkens the plate: inside the warped mask the surface is darker than the rest of the part
    defect = sm.image[warped & sm.inside]
    plate = sm.image[~warped & sm.inside]
    assert defect.mean() < plate.mean() - 0.03
    # and a canonical map carried back lands on the frame mask
    back = sm.to_frame(warped.astype(np.float32), frame.shape[:2]) > 0.5
    assert (back & mask).sum() / (back | mask).sum() > 0.8


def test_gamma_moves_inside_and_outside_means_to_their_targets():
    rng = np.random.default_rng(5)
    frame, _, _ = make_frame(4, None, rng, angle=10.0)
    cfg = PreprocessConfig(target_inside=0.45, target_outside=0.15)
    sm = preprocess_frame(frame, cfg)
    plain = preprocess_frame(frame, cfg.model_copy(update={"target_inside": 0.999, "target_outside": 0.999}))
    assert abs(sm.image[sm.inside].mean() - 0.45) < 0.05
    assert abs(sm.image[~sm.inside].mean() - 0.15) < 0.05
    assert sm.gamma_inside != pytest.approx(1.0) and plain.image.mean() > sm.image.mean()


def test_bad_frames_are_skipped_with_a_reason():
    empty = np.full((600, 800), 40, np.uint8)
    with pytest.raises(SkippedFrame, match="no part"):
        preprocess_frame(empty, PreprocessConfig())
    two = empty.copy()
    two[100:250, 100:250] = 200
    two[300:450, 500:650] = 200
    with pytest.raises(SkippedFrame, match="several parts"):
        preprocess_frame(two, PreprocessConfig())
    cut = empty.copy()
    cut[0:150, 300:450] = 200
    with pytest.raises(SkippedFrame, match="cut by the frame border"):
        preprocess_frame(cut, PreprocessConfig())
    ok = empty.copy()
    ok[200:400, 300:500] = 200
    small = preprocess_frame(ok, PreprocessConfig(size=64, orient="none"))  # any frame size, any output size
    assert small.image.shape == (64, 64) and min(abs(small.angle_deg) % 90, 90 - abs(small.angle_deg) % 90) < 1.0


def test_folder_run_writes_outlines_and_survives_bad_files(tmp_path):
    raw = make_led_dataset(tmp_path / "raw", scale=0.01, progress=False)
    cv2.imwrite(str(raw / "test" / "good" / "zz_blank.png"), np.full((300, 300), 30, np.uint8))
    (raw / "test" / "good" / "zz_broken.png").write_bytes(b"\x89PNG broken")
    counts = preprocess_folder(raw, tmp_path / "out", PreprocessConfig(size=128), progress=False)
    assert counts == {"ok": 13, "skipped": 1, "error": 1}
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "out" / "outlines.csv").open())}
    assert rows["test/good/zz_blank.png"]["status"] == "skipped"
    assert rows["test/good/zz_blank.png"]["reason"].startswith("no part found")
    assert rows["test/good/zz_broken.png"]["status"] == "error"
    good = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["x3"] and r["angle_deg"] and r["gamma_inside"] for r in good)
    masks = list((tmp_path / "out" / "ground_truth").rglob("*.png"))
    assert len(masks) == 3 and all(cv2.imread(str(m), 0).shape == (128, 128) for m in masks)
    assert (tmp_path / "out" / "preprocess.yaml").is_file()
    assert not (tmp_path / "out" / "test" / "good" / "zz_blank.png").exists()


def test_generator_respects_the_reference_constraints():
    rng = np.random.default_rng(0)
    for defect, allowed in ALLOWED_TYPES.items():
        for kind in range(1, 6):
            if kind in allowed:
                frame, mask, _ = make_frame(kind, defect, rng)
                assert frame.shape == (1024, 1280) and frame.dtype == np.uint8 and mask.any()
            else:
                with pytest.raises(ValueError, match="never occurs"):
                    make_frame(kind, defect, rng)
    a, _, _ = make_frame(2, None, np.random.default_rng(9))
    b, _, _ = make_frame(2, None, np.random.default_rng(9))
    assert np.array_equal(a, b)


def test_orientation_mark_is_found_on_every_package_type():
    rng = np.random.default_rng(7)
    wrong = []
    for i in range(40):
        kind, angle = i % 5 + 1, float(rng.uniform(-180, 180))
        frame, _, _ = make_frame(kind, None, rng, angle=angle)
        sm = preprocess_frame(frame, PreprocessConfig())
        if abs((sm.angle_deg - angle + 180) % 360 - 180) > 1.0:
            wrong.append((kind, angle))
    assert wrong == []


@pytest.mark.parametrize("mask_name", ["{}.bmp", "{}_mask.bmp", "{}.png", "{}_mask.png"])
def test_every_mask_name_data_reading_accepts_follows_its_frame(tmp_path, mask_name):
    frame, mask, _ = make_frame(1, "unclean", np.random.default_rng(11), angle=20.0)
    raw = tmp_path / "raw"
    (raw / "test" / "unclean").mkdir(parents=True)
    (raw / "ground_truth" / "unclean").mkdir(parents=True)
    cv2.imwrite(str(raw / "test" / "unclean" / "f.png"), frame)
    cv2.imwrite(str(raw / "ground_truth" / "unclean" / mask_name.format("f")), mask.astype(np.uint8) * 255)
    cfg = PreprocessConfig(size=128)
    assert preprocess_folder(raw, tmp_path / "out", cfg, progress=False) == {"ok": 1, "skipped": 0, "error": 0}
    written = cv2.imread(str(tmp_path / "out" / "ground_truth" / "unclean" / "f.png"), cv2.IMREAD_GRAYSCALE) > 0
    expected = preprocess_frame(frame, cfg).warp_mask(mask)
    assert expected.any() and np.array_equal(written, expected)
