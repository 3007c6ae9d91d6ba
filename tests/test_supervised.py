"""The supervised defect-kind model: settings, data, training and resume, metrics, the two-stage
verdict and the ``aoiflow supervise`` commands, on small generated sets written as real files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from aoiflow.cli import app
from aoiflow.config import ConfigError
from aoiflow.runs import RunError
from aoiflow.supervised import train as sup_train
from aoiflow.supervised.config import SupervisedConfig, build_supervised_config, load_supervised_config, \
    save_supervised_config
from aoiflow.supervised.dataset import downsize_mask, load_supervised_data, read_label_set, split_stratified
from aoiflow.supervised.evaluate import ImageOutcome, evaluate_supervised, summarise
from aoiflow.supervised.labels import LabelError
from aoiflow.supervised.metrics import (accuracy, class_scores, image_auroc, image_kind, kind_confusion,
                                        mean_score, pixel_confusion, precision_recall, region_counts)
from aoiflow.supervised.model import SupervisedError, SupervisedModel
from aoiflow.supervised.train import extend_plan, fit_supervised, lr_factor
from aoiflow.supervised.verdict import anomalous_area, class_regions, explained_area, region_dicts, two_stage_verdict
from aoiflow.train import TrainingInterrupted

runner = CliRunner()
KINDS = ("good", "stain", "crack")
# Small and fast: 32 px, a narrow U-Net, one thread (two threads on two busy cores run 10x slower).
TINY = {"model": {"image_size": 32, "width": 8, "depth": 2},
        "train": {"batch_size": 8, "lr": 1e-2, "threads": 1, "augment": ["hflip", "vflip", "rot90"]},
        "infer": {"min_region_area": 2}}


# --- generated sets ------------------------------------------------------------------------------

def _picture(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey texture (uint8 (size, size)) with a bright square (stain, class 1) or a dark line
    two pixels wide (crack, class 2) or nothing (good), and its class mask."""
    tex = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    img = 0.5 + 0.08 * tex / (tex.std() + 1e-6) + rng.normal(0, 0.02, (size, size))
    mask = np.zeros((size, size), np.uint8)
    if kind == "stain":
        s = int(rng.integers(size // 7, size // 4))
        x, y = rng.integers(1, size - s - 1, 2)
        img[y:y + s, x:x + s] = 0.9
        mask[y:y + s, x:x + s] = 1
    elif kind == "crack":
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.4, 0.65) * size
        cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
        dx, dy = length / 2 * np.cos(ang), length / 2 * np.sin(ang)
        line = np.zeros((size, size), np.uint8)
        cv2.line(line, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, 2)
        img[line > 0] = 0.12
        mask[line > 0] = 2
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_mask_set(root: Path, n: int, seed: int, size: int = 48) -> tuple[Path, Path]:
    """ROOT/images/*.png and ROOT/masks/*.png (class indices, classes.txt: stain, crack), kinds in
    turn good, stain, crack. Returns (labels, images)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = _picture(rng, KINDS[i % 3], size)
        _png(root / "images" / f"img{i:03d}.png", img)
        _png(root / "masks" / f"img{i:03d}.png", mask)
    (root / "masks" / "classes.txt").write_text("stain\ncrack\n")
    return root / "masks", root / "images"


def make_mvtec_set(root: Path, per_kind: int, seed: int, size: int = 32, kinds=KINDS, train_good: int = 0) -> Path:
    """ROOT/test/<kind>/*.png with ROOT/ground_truth/<kind>/*_mask.png (0/255); a kind other than
    good and stain is painted as a crack."""
    rng = np.random.default_rng(seed)
    for kind in kinds:
        for i in range(per_kind):
            img, mask = _picture(rng, kind if kind in ("good", "stain") else "crack", size)
            _png(root / "test" / kind / f"{i:03d}.png", img)
            if kind != "good":
                _png(root / "ground_truth" / kind / f"{i:03d}_mask.png", (mask > 0).astype(np.uint8) * 255)
    for i in range(train_good):
        _png(root / "train" / "good" / f"{i:03d}.png", _picture(rng, "good", size)[0])
    (root / "ground_truth").mkdir(parents=True, exist_ok=True)
    return root


def tiny_config(**train) -> SupervisedConfig:
    return build_supervised_config(overrides={**TINY, "train": {**TINY["train"], **train}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for 150 steps on 42 generated 48-px images (at 32 px), and a held-out set."""
    tmp = tmp_path_factory.mktemp("sup")
    labels, images = make_mask_set(tmp / "train", 42, seed=0)
    held_out = make_mask_set(tmp / "held_out", 24, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_supervised(labels, tmp / "SUP", tiny_config(steps=150, eval_every=50), images=images,
                                progress=False)
    return result, held_out


# --- learning, files, loading --------------------------------------------------------------------

def test_learns_stains_and_cracks_on_held_out_images(trained, tmp_path):
    result, (labels, images) = trained
    assert result.class_names == ["stain", "crack"] and result.steps_done == 150
    assert [row["step"] for row in result.history] == [50, 100, 150]
    for name in ("model.pt", "checkpoint.pt", "history.csv", "config.yaml"):
        assert (result.out / name).is_file(), name
    assert yaml.safe_load((result.out / "config.yaml").read_text())["model"]["channels"] == 1  # detected, recorded

    metrics = evaluate_supervised(result.out, labels, tmp_path / "eval", images=images, progress=False)
    iou = {k: v["iou"] for k, v in metrics["pixel"]["per_class"].items()}
    assert iou["stain"] > 0.5 and iou["crack"] > 0.5, iou
    assert metrics["image"]["accuracy"] > 0.9 and metrics["image"]["kind_accuracy"] > 0.9, metrics["image"]
    assert metrics["image"]["auroc"] > 0.9
    assert metrics["regions_iou_0.5"]["all"]["recall"] > 0.8
    assert metrics["confusion"]["kinds"] == ["good", "stain", "crack"]
    assert np.array(metrics["confusion"]["matrix"]).sum() == 24
    for name in ("metrics.json", "predictions.csv", "confusion.png", "examples.png", "report.html"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["class_names"] == ["stain", "crack"]
    assert "images by kind" in (tmp_path / "eval" / "report.html").read_text().lower()


def test_model_file_loads_infers_and_finds_regions_in_original_pixels(trained, tmp_path):
    result, _ = trained
    model = SupervisedModel.load(result.out)
    assert model.version.startswith(f"{result.out.name}@") and len(model.version.split("@")[1]) == 12
    assert SupervisedModel.load(result.out / "model.pt").class_names == ["stain", "crack"]
    assert not model.training
    state = torch.load(result.out / "model.pt", weights_only=True)
    assert state["format"] == "aoiflow-supervised/1" and state["class_names"] == ["stain", "crack"]

    rng = np.random.default_rng(5)
    img, mask = _picture(rng, "stain", 48)
    probs = model.infer(torch.from_numpy(img / 255.0).float()[None, None])
    assert probs.shape == (1, 3, 32, 32) and torch.allclose(probs.sum(1), torch.ones(1, 32, 32), atol=1e-5)
    regions = model.predict_regions(probs[0], original_size=(48, 48))
    assert [r["kind"] for r in regions] == ["stain"]
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = regions[0]["box"]
    near = 3  # two model pixels (1.5 original pixels each)
    assert max(abs(x0 - xs.min()), abs(y0 - ys.min()), abs(x1 - xs.max()), abs(y1 - ys.max())) <= near, regions
    # masks are max-pooled to the model size, so regions come out up to a model pixel wider
    assert mask.sum() / 2 <= regions[0]["area"] <= 2 * mask.sum() and regions[0]["confidence"] >= 0.5
    # the verdict with the model's own settings: GANomaly flags the stain's area -> a known kind
    amap = mask.astype(float)
    verdict, kind, conf, _ = model.verdict("anomalous", amap, 0.5, probs[0])
    assert (verdict, kind) == ("defect:stain", "stain") and conf > 0.5
    assert np.allclose(model.infer_image(img[..., None] / 255.0), probs[0].numpy(), atol=1e-5)


def test_evaluation_keeps_kinds_the_model_does_not_know_and_sets_without_defects(trained, tmp_path):
    result, _ = trained
    data = make_mvtec_set(tmp_path / "data", 2, seed=7, kinds=("good", "stain", "scratch"))
    with pytest.warns(UserWarning, match="scratch are unknown to the model"):
        metrics = evaluate_supervised(result.out, data, tmp_path / "eval", progress=False)
    assert metrics["class_names"] == ["stain", "crack", "scratch"] and metrics["unknown_classes"] == ["scratch"]
    assert metrics["confusion"]["kinds"] == ["good", "stain", "crack", "scratch"]
    assert metrics["pixel"]["per_class"]["scratch"]["recall"] == 0.0
    assert "does not know (their pixels count as missed): scratch" in (tmp_path / "eval" / "report.html").read_text()

    good_only = make_mvtec_set(tmp_path / "good", 3, seed=8, kinds=("good",))
    metrics = evaluate_supervised(result.out, good_only, tmp_path / "eval_good", progress=False)
    assert metrics["image"]["auroc"] is None and metrics["counts"]["with_defects"] == 0
    assert (tmp_path / "eval_good" / "report.html").is_file()


def test_loading_refuses_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"format": "aoiflow-model/1", "generator": {}}, tmp_path / "run" / "model.pt")
    with pytest.raises(SupervisedError, match=r"run[/\\]model.pt: not a supervised defect model"):
        SupervisedModel.load(tmp_path / "run")
    with pytest.raises(SupervisedError, match="supervised model not found"):
        SupervisedModel.load(tmp_path / "nothing")
    torch.save({"format": "aoiflow-supervised/1", "x": object()}, tmp_path / "evil.pt")
    with pytest.raises(RunError, match="refused"):
        SupervisedModel.load(tmp_path / "evil.pt")


# --- resume --------------------------------------------------------------------------------------

def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    labels, images = make_mask_set(tmp_path / "set", 12, seed=2, size=32)
    config = tiny_config(steps=40, eval_every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = fit_supervised(labels, tmp_path / "whole", config, images=images, progress=False)

        real_step, calls = sup_train._train_step, []

        def interrupted(*args):
            calls.append(1)
            if len(calls) == 26:
                raise KeyboardInterrupt
            return real_step(*args)

        monkeypatch.setattr(sup_train, "_train_step", interrupted)
        with pytest.raises(TrainingInterrupted, match=r"20 of 40 steps.*--resume"):
            fit_supervised(labels, tmp_path / "cut", config, images=images, progress=False)
        assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 20
        monkeypatch.setattr(sup_train, "_train_step", real_step)
        with pytest.raises(SupervisedError, match="--resume"):
            fit_supervised(labels, tmp_path / "cut", config, images=images, progress=False)
        resumed = fit_supervised(labels, tmp_path / "cut", config, images=images, resume=True, progress=False)
        assert [r["step"] for r in resumed.history] == [10, 20, 30, 40] and resumed.steps_done == 40
        a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["weights"]
        b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["weights"]
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
        assert resumed.best_step == whole.best_step

        longer = fit_supervised(labels, tmp_path / "cut", tiny_config(steps=60, eval_every=10), images=images,
                                resume=True, progress=False)
        assert longer.steps_done == 60 and [r["step"] for r in longer.history][-2:] == [50, 60]
        with pytest.raises(SupervisedError, match="different model shape"):
            fit_supervised(labels, tmp_path / "cut", build_supervised_config(overrides={"model": {"width": 16}}),
                           images=images, resume=True, progress=False)


def test_one_cycle_schedule_and_its_extension():
    plan = [[0, 1.0, 100]]
    assert lr_factor(0, plan) == pytest.approx(1 / 25)
    assert lr_factor(10, plan) == pytest.approx(1.0)
    assert lr_factor(99, plan) < 1e-3
    longer = extend_plan(plan, 50, 200)
    assert lr_factor(50, longer) == pytest.approx(lr_factor(49, plan))  # no jump
    assert lr_factor(199, longer) < 1e-3 and extend_plan(plan, 50, 100) == plan


# --- data ----------------------------------------------------------------------------------------

def test_joint_augmentation_moves_image_and_mask_together():
    y = torch.zeros(6, 16, 16, dtype=torch.long)
    y[:, 2:5, 3:12] = 1
    y[:, 9:14, 1:3] = 2
    x = torch.cat([y[:, None].float() / 2, torch.rand(6, 2, 16, 16)], 1)
    xa, ya = sup_train._augment(x, y, ["hflip", "vflip", "rot90", "shift"], torch.Generator().manual_seed(0))
    assert torch.equal((xa[:, 0] * 2).round().long(), ya)
    assert not torch.equal(ya, y)


def test_masks_shrink_keeping_thin_and_rare_classes():
    mask = np.zeros((96, 96), np.uint8)
    mask[40, :] = 2                       # a crack one pixel high
    mask[10:60, 10:60] = np.where(mask[10:60, 10:60] == 2, 2, 1)
    small = downsize_mask(mask, 32)
    assert small.shape == (32, 32) and (small[13] == 2).all()  # the line survives, across the stain too
    assert set(np.unique(small)) == {0, 1, 2}
    assert (downsize_mask(np.eye(8, dtype=np.uint8), 32) == np.kron(np.eye(8), np.ones((4, 4)))).all()


def test_stratified_split():
    positive = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    train, val = split_stratified(positive, 0.34, seed=3)
    assert sorted(train + val) == list(range(10)) and not set(train) & set(val)
    assert positive[val].sum() == 2 and (~positive[val]).sum() == 1
    assert split_stratified(positive, 0.34, seed=3) == (train, val)
    with pytest.raises(SupervisedError, match="at least 2"):
        split_stratified(np.array([1, 0, 0], bool), 0.2, 0)


def test_unreadable_image_is_skipped_with_a_warning_naming_it(tmp_path):
    labels, images = make_mask_set(tmp_path, 6, seed=4, size=32)
    bad = images / "img001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # header intact, pixels cut off
    label_set = read_label_set(labels, images)
    with pytest.warns(UserWarning, match=r"skipped .*img001\.png"):
        loaded = load_supervised_data(label_set, 1, 32)
    assert len(loaded) == 5 and loaded.skipped[0][0] == bad
    assert loaded.images.dtype == torch.uint8 and loaded.masks.shape == (5, 32, 32)


def test_label_problems_are_warned_once_each_and_empty_sets_refused(tmp_path):
    img = _png(tmp_path / "a.png", np.full((20, 20), 90, np.uint8))
    doc = {"imagePath": img.name, "imageHeight": 20, "imageWidth": 20,
           "shapes": [{"label": "stain", "shape_type": "rectangle", "points": [[2, 2], [8, 8]]},
                      {"label": "stain", "shape_type": "point", "points": [[3, 3]]}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning) as caught:
        read_label_set(tmp_path)
    problems = [str(w.message) for w in caught if "label problem" in str(w.message)]
    assert len(problems) == 1 and "a.json" in problems[0] and "point" in problems[0]

    negatives = make_mvtec_set(tmp_path / "negatives", 3, seed=0, kinds=("good",))
    with pytest.raises(SupervisedError, match=r"negatives: no labelled defects"):
        read_label_set(negatives)


# --- settings ------------------------------------------------------------------------------------

def test_config_file_flags_and_errors(tmp_path):
    f = tmp_path / "sup.yaml"
    f.write_text(yaml.safe_dump({"model": {"image_size": 64}, "train": {"steps": 10}}))
    cfg = build_supervised_config(f, {"train": {"steps": 30, "seed": None}}, {"train.steps": "--steps"})
    assert (cfg.model.image_size, cfg.train.steps, cfg.train.seed, cfg.model.width) == (64, 30, 0, 16)
    save_supervised_config(cfg, tmp_path / "saved.yaml", header="hello")
    assert load_supervised_config(tmp_path / "saved.yaml") == cfg
    with pytest.raises(ConfigError, match=r"--image-size: image_size must be a power of two from 32 to 512"):
        build_supervised_config(overrides={"model": {"image_size": 48}}, flags={"model.image_size": "--image-size"})
    f.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    with pytest.raises(ConfigError, match=r"sup.yaml: train.stepz"):
        build_supervised_config(f)
    assert SupervisedConfig().train.steps == 2000 and SupervisedConfig().infer.min_confidence == 0.5


# --- metrics, known answers ----------------------------------------------------------------------

def test_pixel_iou_and_f1_per_class():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 0, 0],
                      [0, 0, 0, 0]])
    pred = np.array([[0, 0, 1, 1],
                     [0, 1, 1, 0],
                     [2, 0, 0, 0],
                     [0, 0, 0, 2]])
    conf = pixel_confusion(pred, truth, 3)
    assert conf.tolist() == [[8, 1, 1], [1, 3, 0], [1, 0, 1]]
    scores = class_scores(conf, ["stain", "crack"])
    # stain: TP 3, FP 1, FN 1 -> IoU 3/5, F1 6/8; crack: TP 1, FP 1, FN 1 -> IoU 1/3, F1 2/4
    assert scores["stain"]["iou"] == pytest.approx(0.6) and scores["stain"]["f1"] == pytest.approx(0.75)
    assert scores["crack"]["iou"] == pytest.approx(1 / 3) and scores["crack"]["f1"] == pytest.approx(0.5)
    assert scores["background"]["iou"] == pytest.approx(8 / 12) and scores["crack"]["pixels"] == 2
    assert mean_score(scores) == pytest.approx((0.6 + 1 / 3) / 2)
    absent = class_scores(pixel_confusion(np.zeros((2, 2)), np.zeros((2, 2)), 2), ["crack"])
    assert absent["crack"]["iou"] is None and mean_score(absent) is None


def test_region_precision_recall_same_class_at_iou_half():
    truth = np.zeros((10, 12), np.uint8)
    truth[0:2, 0:2] = 1      # stain A, 4 px
    truth[5:7, 0:4] = 1      # stain B, 8 px
    truth[8:10, 8:12] = 2    # crack, 8 px
    pred = np.zeros_like(truth)
    pred[0:2, 0:3] = 1       # A: IoU 4/6 -> match
    pred[5:6, 0:2] = 1       # B: IoU 2/8 -> no match
    pred[8:10, 8:12] = 1     # the crack predicted as a stain: IoU 1 but the wrong class -> no match
    counts = region_counts(pred, truth, 3)
    assert counts.tolist() == [[0, 0, 0], [3, 2, 1], [0, 1, 0]]
    pr = precision_recall(counts[1:].sum(0))
    assert (pr["precision"], pr["recall"], pr["matched"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 1)
    assert precision_recall(np.array([0, 0, 0]))["precision"] is None


def test_image_kinds_confusion_accuracy_auroc():
    names = ["stain", "crack"]
    assert image_kind(np.zeros((3, 3)), names) == "good"
    assert image_kind(np.array([[1, 2, 2]]), names) == "crack"
    kinds = ["good", "stain", "crack"]
    m = kind_confusion(["good", "good", "stain", "crack", "crack"], ["good", "stain", "stain", "crack", "good"], kinds)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="scratch"):
        kind_confusion(["scratch"], ["good"], kinds)
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([1, 1], [0.2, 0.3]) is None

    outcomes = [ImageOutcome(Path(f"{i}.png"), t, p, s, []) for i, (t, p, s) in enumerate(
        [("good", "good", 0.1), ("good", "stain", 0.7), ("stain", "stain", 0.9), ("crack", "good", 0.3)])]
    conf = np.array([[10, 0, 0], [0, 2, 0], [0, 0, 2]])
    summary = summarise(conf, np.array([[0, 0, 0], [2, 1, 1], [0, 1, 0]]), outcomes, names)
    assert summary["image"]["accuracy"] == 0.5 and summary["image"]["kind_accuracy"] == 0.5
    assert summary["image"]["auroc"] == pytest.approx(0.75)
    assert summary["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert summary["regions_iou_0.5"]["per_class"]["stain"]["precision"] == 0.5
    assert summary["regions_iou_0.5"]["all"]["recall"] == 0.5
    assert summary["counts"] == {"images": 4, "with_defects": 2, "without_defects": 2}


# --- regions and the two-stage verdict -----------------------------------------------------------

def _probs(class_map: np.ndarray, p: float = 0.9, k: int = 2) -> np.ndarray:
    """(K+1, H, W) probabilities: ``p`` for the class of ``class_map`` at each pixel, the rest spread."""
    out = np.full((k + 1, *class_map.shape), (1 - p) / k, np.float32)
    for c in range(k + 1):
        out[c][class_map == c] = p
    return out


def test_class_regions_filters_and_boxes_in_original_pixels():
    cmap = np.zeros((8, 8), np.int64)
    cmap[1:3, 1:4] = 1          # stain, 6 px
    cmap[6, 6] = 1              # a 1-px speck
    cmap[5:8, 0] = 2            # crack, 3 px
    probs = _probs(cmap)
    probs[:, 5:8, 0] = [[0.3], [0.2], [0.5]]  # crack still the argmax, but only 0.5 sure
    labels, regions = class_regions(probs, min_area=2, min_confidence=0.6)
    assert [(r.cls, r.area, r.box) for r in regions] == [(1, 6, (1, 1, 3, 2))]
    assert regions[0].confidence == pytest.approx(0.9) and (labels > 0).sum() == 6
    _, both = class_regions(probs, min_area=2, min_confidence=0.5)
    assert [r.cls for r in both] == [1, 2]
    records = region_dicts(regions, ["stain", "crack"], labels, original_size=(16, 32))  # x4 wide, x2 high
    assert records[0]["box"] == [4, 2, 15, 5] and records[0]["area"] == 48 and records[0]["kind"] == "stain"
    assert len(records[0]["polygon"]) >= 3


def test_anomalous_area_falls_back_to_the_top_percent():
    amap = np.arange(400, dtype=float).reshape(20, 20)
    assert anomalous_area(amap, 395.5).sum() == 4
    top = anomalous_area(amap, 1000.0)
    assert top.sum() == 4 and top.ravel()[-4:].all()
    assert anomalous_area(amap, None).sum() == 4


class TestTwoStageVerdict:
    names = ["stain", "crack"]

    def _scene(self):
        cmap = np.zeros((20, 20), np.int64)
        cmap[2:6, 2:6] = 1        # a stain, 16 px
        cmap[10, 5:15] = 2        # a crack, 10 px
        return cmap

    def test_normal_without_regions_is_ok(self):
        probs = _probs(np.zeros((20, 20), np.int64))
        assert two_stage_verdict("normal", np.zeros((20, 20)), 0.5, probs, self.names, 0.5) == ("ok", None, None, [])

    def test_normal_with_an_unsure_region_is_ok(self):
        cmap = np.zeros((20, 20), np.int64)
        cmap[2:6, 2:6] = 1
        assert two_stage_verdict("normal", np.zeros((20, 20)), 0.5, _probs(cmap, 0.45), self.names, 0.5)[0] == "ok"

    def test_normal_with_a_confident_region_is_a_missed_known_defect(self):
        verdict, kind, conf, regions = two_stage_verdict("normal", np.zeros((20, 20)), 0.5, _probs(self._scene()),
                                                         self.names, 0.5)
        assert (verdict, kind) == ("defect:stain", "stain") and conf == pytest.approx(0.9)
        assert [r["kind"] for r in regions] == ["stain", "crack"]
        assert regions[0]["box"] == [2, 2, 5, 5] and regions[0]["area"] == 16

    def test_anomalous_area_covered_by_a_known_kind(self):
        amap = np.zeros((20, 20))
        amap[9:12, 5:15] = 1.0    # 30 px around the crack (GANomaly's halo): the crack's 10 px explain the spot
        verdict, kind, conf, regions = two_stage_verdict("anomalous", amap, 0.5, _probs(self._scene()), self.names,
                                                         0.5)
        assert (verdict, kind, conf) == ("defect:crack", "crack", pytest.approx(0.9)) and len(regions) == 2

    def test_unexplained_spots_beyond_min_cover_make_it_unknown(self):
        amap = np.zeros((20, 20))
        amap[9:12, 5:15] = 1.0    # 30 px around the crack: explained
        amap[14:20, 14:20] = 1.0  # 36 px where no known kind is: 30 of 66 explained (0.45)
        probs = _probs(self._scene())
        assert two_stage_verdict("anomalous", amap, 0.5, probs, self.names, 0.5)[:3] == ("unknown_anomaly", None, None)
        verdict, kind, _, _ = two_stage_verdict("anomalous", amap, 0.5, probs, self.names, 0.5, min_cover=0.4)
        assert (verdict, kind) == ("defect:crack", "crack")

    def test_explained_area_takes_whole_parts_a_known_region_touches(self):
        area = np.zeros((8, 8), bool)
        area[0:3, 0:3] = True     # part 1 (9 px), touched at one pixel
        area[5:8, 5:8] = True     # part 2 (9 px), untouched
        known = np.zeros((8, 8), bool)
        known[2, 2] = known[4, 0] = True  # (4, 0) lies outside the area: it explains nothing
        out = explained_area(area, known)
        assert out.sum() == 9 and out[0:3, 0:3].all() and not out[5:8, 5:8].any()
        assert not explained_area(area, np.zeros((8, 8), bool)).any()

    def test_dominant_kind_is_the_one_covering_most_of_the_area(self):
        amap = np.zeros((20, 20))
        amap[2:6, 2:6] = 1.0
        amap[10, 5:8] = 1.0       # 16 stain pixels, 3 crack pixels flagged
        verdict, kind, _, _ = two_stage_verdict("anomalous", amap, 0.5, _probs(self._scene()), self.names, 0.5)
        assert verdict == "defect:stain" and kind == "stain"

    def test_anomalous_area_no_known_kind_covers_is_unknown(self):
        amap = np.zeros((20, 20))
        amap[15:19, 15:19] = 1.0
        verdict, kind, conf, regions = two_stage_verdict("anomalous", amap, 0.5, _probs(self._scene()), self.names,
                                                         0.5)
        assert (verdict, kind, conf) == ("unknown_anomaly", None, None) and len(regions) == 2
        nothing = two_stage_verdict("anomalous", amap, 0.5, _probs(np.zeros((20, 20), np.int64)), self.names, 0.5)
        assert nothing == ("unknown_anomaly", None, None, [])

    def test_empty_anomalous_area_uses_the_top_percent_of_the_map(self):
        amap = np.zeros((20, 20))
        amap[3, 3] = amap[4, 4] = amap[3, 4] = amap[4, 3] = 0.2   # the 4 highest pixels (1 % of 400), in the stain
        verdict, _, _, _ = two_stage_verdict("anomalous", amap, 0.5, _probs(self._scene()), self.names, 0.5)
        assert verdict == "defect:stain"

    def test_probs_at_the_model_size_are_resized_to_the_map(self):
        small = np.zeros((10, 10), np.int64)
        small[1:3, 1:3] = 1       # 4 model pixels = 16 map pixels at (2..5, 2..5)
        amap = np.zeros((20, 20))
        amap[2:6, 2:6] = 1.0
        verdict, kind, _, regions = two_stage_verdict("anomalous", amap, 0.5, _probs(small), self.names, 0.5,
                                                      min_area=3)
        assert kind == "stain" and 12 <= regions[0]["area"] <= 20
        # min_area is in the probabilities' pixels: 5 model pixels = 20 map pixels, more than the stain has
        assert two_stage_verdict("anomalous", amap, 0.5, _probs(small), self.names, 0.5, min_area=5)[0] == \
            "unknown_anomaly"

    def test_bad_arguments(self):
        probs = _probs(self._scene())
        with pytest.raises(ValueError, match="decision must be one of"):
            two_stage_verdict("maybe", np.zeros((20, 20)), 0.5, probs, self.names, 0.5)
        with pytest.raises(ValueError, match="3 channels but 1 class name"):
            two_stage_verdict("normal", np.zeros((20, 20)), 0.5, probs, ["stain"], 0.5)
        with pytest.raises(ValueError, match=r"anomaly_map must be \(H, W\)"):
            two_stage_verdict("normal", np.zeros((1, 20, 20)), 0.5, probs, self.names, 0.5)


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "eval_every": 10}}))
    return f


def test_cli_train_and_test_on_an_mvtec_folder(tmp_path, tiny_yaml):
    data = make_mvtec_set(tmp_path / "data", 5, seed=6, train_good=3)
    sup = tmp_path / "SUP"
    r = runner.invoke(app, ["supervise", "train", str(data), "--out", str(sup), "--config", str(tiny_yaml),
                            "--steps", "20", "--image-size", "32", "--seed", "1", "--include-train-good", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 kind(s): crack, stain" in r.output and "20 steps" in r.output and "model.pt" in r.output
    # 10 with defects (2 held out) and 5 + 3 without (1 held out): train/good joined the negatives
    assert "15 training and 3 validation images" in r.output
    saved = yaml.safe_load((sup / "config.yaml").read_text())
    assert saved["train"]["steps"] == 20 and saved["train"]["seed"] == 1 and saved["model"]["width"] == 8

    r = runner.invoke(app, ["supervise", "test", str(sup), str(data), "--out", str(tmp_path / "eval"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "image_accuracy" in r.output and "report.html" in r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["counts"]["images"] == 15 and metrics["confusion"]["kinds"] == ["good", "crack", "stain"]
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000

    r = runner.invoke(app, ["supervise", "train", str(data), "--out", str(sup), "--quiet"])
    assert r.exit_code == 2 and "--resume" in r.output
    with pytest.warns(UserWarning, match="3 image.s. the run trained or validated on are not in the label set"):
        r = runner.invoke(app, ["supervise", "train", str(data), "--out", str(sup), "--resume", "--steps", "30",
                                "--quiet"])  # without --include-train-good
    assert r.exit_code == 0 and "30 steps" in r.output, r.output
    r = runner.invoke(app, ["supervise", "train", str(data), "--out", str(tmp_path / "x"), "--image-size", "48"])
    assert r.exit_code == 2 and "--image-size: image_size must be a power of two" in r.output


def test_cli_bad_input_names_the_file(tmp_path, tiny_yaml):
    negatives = make_mvtec_set(tmp_path / "negatives", 3, seed=0, kinds=("good",))
    r = runner.invoke(app, ["supervise", "train", str(negatives), "--out", str(tmp_path / "a"), "--quiet"])
    assert r.exit_code == 2 and "no labelled defects" in r.output and "negatives" in r.output

    labelme = tmp_path / "labelme"
    labelme.mkdir()
    (labelme / "part1.json").write_text(json.dumps({"imagePath": "part1.png", "shapes": []}))
    r = runner.invoke(app, ["supervise", "train", str(labelme), "--out", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 2 and "part1.json" in r.output and "part1.png" in r.output and "missing" in r.output

    one = make_mvtec_set(tmp_path / "one", 1, seed=0, kinds=("good", "stain"))
    r = runner.invoke(app, ["supervise", "train", str(one), "--out", str(tmp_path / "d"), "--quiet"])
    assert r.exit_code == 2 and "one: need at least 2 readable images with defects" in r.output, r.output

    r = runner.invoke(app, ["supervise", "train", str(labelme), "--format", "pascal", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "unknown label format 'pascal'" in r.output

    r = runner.invoke(app, ["supervise", "test", str(tmp_path / "nope"), str(negatives)])
    assert r.exit_code == 2 and "supervised model not found" in r.output
    with pytest.raises(LabelError, match="label file or folder not found"):
        read_label_set(tmp_path / "missing")
