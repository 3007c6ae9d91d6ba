"""The LED frame generator: variability 0 keeps the earlier frames, variability 1 makes normal parts
of one type differ, defects keep their masks, and preprocessing still finds and aligns every part."""

import hashlib

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from aoiflow import ledsynth
from aoiflow.cli import app
from aoiflow.config import PreprocessConfig
from aoiflow.ledsynth import ALLOWED_TYPES, CANON, DEFECT_FUNCS, PKG, make_frame, make_led_dataset
from aoiflow.ledsynth import parse_variability, render_package
from aoiflow.preprocess import preprocess_folder, preprocess_frame

# Hashes of frames made by the generator before variability existed (commit 9113552's parent, same
# seeds), per OpenCV release: its drawing and warping round differently from one release to the
# next (5.0 -> 5.1 changed every frame). Each pair was made by running that older generator under
# the release (numpy 2.4.6), so the test still says "variability 0 is the generator of before".
EARLIER = {"5.0": ("70ae8a97f5eebdf0", "380992915a673fe6"),
           "5.1": ("d60aca05e115064e", "4a31f6df32771e28")}
OFF = (CANON - PKG) // 2


def _earlier(which: int) -> str:
    release = ".".join(cv2.__version__.split(".")[:2])
    if release not in EARLIER:
        pytest.skip(f"no recorded frames of the earlier generator for OpenCV {cv2.__version__}: run the "
                    f"generator of 9113552~1 under it and add its hashes to EARLIER")
    return EARLIER[release][which]


def _hash(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a if isinstance(a, bytes) else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _frames_hash(**kw) -> str:
    rng = np.random.default_rng(123)
    arrays = []
    for kind, defect in [(1, None), (2, "plate_rift"), (3, "unclean"), (5, "glue_overflow"), (4, None)]:
        frame, mask, matrix = make_frame(kind, defect, rng, **kw)
        arrays += [frame, matrix] + ([mask] if mask is not None else [])
    return _hash(arrays)


@pytest.mark.parametrize("kw", [{}, {"variability": 0.0}])
def test_variability_zero_gives_the_earlier_frames_bit_for_bit(kw):
    assert _frames_hash(**kw) == _earlier(0)


def test_variability_zero_gives_the_earlier_dataset_bit_for_bit(tmp_path):
    make_led_dataset(tmp_path, scale=0.01, seed=5, progress=False, variability="none")
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == 16  # 5 train + 5 good + 3 defective frames, 3 masks
    names = [str(p.relative_to(tmp_path)).encode() for p in files]
    assert _hash(names + [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files]) == _earlier(1)


def _plate(roi: np.ndarray) -> np.ndarray:
    p = roi[OFF : OFF + PKG, OFF : OFF + PKG]
    return p - np.median(p)  # the plate's overall level is removed by preprocessing anyway


def _spread(kind: int, v: float, pairs: int = 3) -> float:
    """Mean absolute difference between two draws of the same type (aligned: both are rendered centred)."""
    rng = np.random.default_rng(kind)
    return float(np.mean([np.abs(_plate(render_package(kind, rng, v)) - _plate(render_package(kind, rng, v))).mean()
                          for _ in range(pairs)]))


def test_strong_variability_makes_parts_of_one_type_differ():
    none, mild, strong = (np.array([_spread(k, v) for k in range(1, 6)]) for v in (0.0, 0.4, 1.0))
    assert (none < 0.012).all()           # grain and a plate-level offset only
    assert (strong > 3 * none).all() and strong.mean() > 5 * none.mean()
    assert none.mean() < mild.mean() < strong.mean()


@pytest.mark.parametrize("defect", sorted(ALLOWED_TYPES))
def test_defects_keep_their_masks_under_strong_variability(defect):
    for kind in ALLOWED_TYPES[defect]:
        rng = np.random.default_rng(kind)
        roi = render_package(kind, rng, 1.0)
        hurt = roi.copy()
        mask = DEFECT_FUNCS[defect](hurt, rng, 1.0)
        assert mask.sum() > 500
        assert np.abs(hurt - roi)[mask].mean() > 0.03  # the part changes where the mask says


def test_same_seed_same_frames_and_the_seed_matters():
    def frames(seed):
        rng = np.random.default_rng(seed)
        return [make_frame(k, d, rng, variability=1.0) for k, d in [(2, None), (1, "unclean")]]

    a, b, c = frames(7), frames(7), frames(8)
    for (fa, ma, xa), (fb, mb, xb) in zip(a, b):
        assert np.array_equal(fa, fb) and np.array_equal(xa, xb)
        assert (ma is None and mb is None) or np.array_equal(ma, mb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert _frames_hash(variability=1.0) not in {frames for frames, _ in EARLIER.values()}


def _true_corners(matrix: np.ndarray) -> np.ndarray:
    o = (CANON - PKG) / 2 - 0.5
    roi = np.array([[o, o], [o + PKG, o], [o + PKG, o + PKG], [o, o + PKG]])
    return roi @ matrix[:, :2].T + matrix[:, 2]


def test_preprocessing_finds_and_orients_strongly_varying_parts():
    rng = np.random.default_rng(11)
    for kind, defect in [(1, None), (2, None), (3, None), (4, None), (5, None), (2, "plate_rift")]:
        frame, _, matrix = make_frame(kind, defect, rng, variability=1.0)
        sm = preprocess_frame(frame, PreprocessConfig())
        # corners listed from the cathode-mark corner: a wrong orientation would be off by a whole side
        assert np.abs(sm.corners - _true_corners(matrix)).max() < 0.01 * PKG


def test_strong_dataset_preprocesses_without_skips_and_keeps_masks(tmp_path):
    raw = make_led_dataset(tmp_path / "raw", scale=0.01, seed=2, progress=False, variability=1.0)
    counts = preprocess_folder(raw, tmp_path / "out", PreprocessConfig(size=128), progress=False)
    assert counts == {"ok": 13, "skipped": 0, "error": 0}
    masks = sorted((tmp_path / "out" / "ground_truth").rglob("*.png"))
    assert len(masks) == 3 and all(cv2.imread(str(m), 0).any() for m in masks)


def test_variability_levels_and_bad_values():
    assert [parse_variability(x) for x in ("none", "Mild", "strong", "0.25", 1)] == [0.0, 0.4, 1.0, 0.25, 1.0]
    for bad in ("huge", "1.5", "-0.1", "nan"):
        with pytest.raises(ValueError, match="variability"):
            parse_variability(bad)


def test_synth_command_passes_variability(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(ledsynth, "make_led_dataset", lambda out, **kw: seen.update(kw))
    runner = CliRunner()
    assert runner.invoke(app, ["synth", str(tmp_path), "--variability", "strong", "--quiet"]).exit_code == 0
    assert seen["variability"] == 1.0
    assert runner.invoke(app, ["synth", str(tmp_path), "--quiet"]).exit_code == 0
    assert seen["variability"] == 0.0
    bad = runner.invoke(app, ["synth", str(tmp_path), "--variability", "2"])
    assert bad.exit_code == 2 and "variability" in bad.output
