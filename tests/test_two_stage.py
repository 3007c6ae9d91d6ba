"""The two-stage verdict through the one inference path: GANomaly's run plus a supervised model,
judged by ``Inspector`` exactly as the rule in ``supervised.verdict`` says, and written by predict."""

import csv
import json

import numpy as np
import pytest
import torch

from aoiflow import data
from aoiflow.predict import Inspector, predict_to_folder, scale_regions
from aoiflow.supervised.config import build_supervised_config
from aoiflow.supervised.train import fit_supervised
from aoiflow.supervised.verdict import two_stage_verdict
from aoiflow.train import fit

VERDICTS = {"ok", "defect:blowhole", "defect:crack", "unknown_anomaly"}


@pytest.fixture(scope="module")
def models(module_tile_subset, tmp_path_factory, module_tiny_config):
    root = tmp_path_factory.mktemp("two_stage")
    fit(module_tile_subset, root / "run", module_tiny_config, progress=False)
    config = build_supervised_config(overrides={"model": {"image_size": 32, "width": 4, "depth": 2},
                                                "train": {"steps": 30, "batch_size": 4, "threads": 1,
                                                          "eval_every": 15}})
    fit_supervised(module_tile_subset, root / "sup", config, progress=False)
    return root / "run", root / "sup"


def test_inspector_gives_the_rules_verdict_with_regions_in_image_pixels(models, module_tile_subset):
    run, sup = models
    inspector = Inspector.load(run, supervised=sup)
    assert inspector.supervised_version and inspector.supervised_version.startswith("sup@")
    paths = sorted(p for p in (module_tile_subset / "test").rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES)
    model = inspector.backend.model
    for pred in inspector.predict_files(paths):
        assert pred.status == "ok" and pred.verdict in VERDICTS
        # the same rule by hand, at GANomaly's model size
        arr, _ = data.read_image_at(pred.path, model.config.model.image_size)
        x = data.to_model_input(arr, model.channels, model.config.model.image_size)[None]
        amap = model.score_batch(x)[2][0, 0].numpy()
        probs = inspector.supervised.infer_image(pred.original)
        expect = inspector.supervised.verdict(pred.decision, amap, inspector.calibration.pixel_threshold, probs)
        assert pred.verdict == expect[0] and pred.kind == expect[1]
        h, w = pred.original.shape[:2]
        for reg in pred.regions:
            x0, y0, x1, y1 = reg["box"]
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        if pred.decision == "normal" and not pred.regions:
            assert pred.verdict == "ok"


def test_predict_writes_the_verdict_columns_and_the_overlay(models, module_tile_subset, tmp_path):
    run, sup = models
    inspector = Inspector.load(run, supervised=sup)
    results = predict_to_folder(inspector, module_tile_subset / "test", tmp_path / "out", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == len(results) == 10
    for row, pred in zip(rows, results, strict=True):
        assert row["verdict"] == pred.verdict and row["kind"] == (pred.kind or "")
        if row["regions"]:
            assert [r["kind"] for r in json.loads(row["regions"])] == [r["kind"] for r in pred.regions]
        assert (tmp_path / "out" / row["map"]).is_file()


def test_without_a_supervised_model_the_verdict_is_ganomalys_decision(models, module_tile_subset):
    run, _ = models
    paths = sorted((module_tile_subset / "test" / "crack").iterdir())
    for pred in Inspector.load(run).predict_files(paths):
        assert pred.verdict == ("anomaly" if pred.decision == "anomalous" else "ok") and pred.regions == []


def test_regions_scale_from_map_to_image_pixels():
    regions = [{"kind": "crack", "confidence": 0.9, "box": [2, 3, 5, 4], "area": 6.0, "polygon": [[2, 3], [5, 4]]}]
    (big,) = scale_regions(regions, sy=4.0, sx=2.0)
    assert big["box"] == [4, 12, 11, 19] and big["area"] == 48.0 and big["polygon"] == [[4.0, 12.0], [10.0, 16.0]]


def test_a_known_kind_inside_the_anomalous_area_names_the_defect():
    """Known answer through the same rule the Inspector calls: a crack region covering the hot spot."""
    amap = np.zeros((16, 16), np.float32)
    amap[4:8, 4:8] = 5.0
    probs = np.zeros((3, 16, 16), np.float32)
    probs[0] = 1.0
    probs[:, 4:8, 4:8] = torch.tensor([0.05, 0.05, 0.9])[:, None, None].numpy()
    verdict, kind, conf, regions = two_stage_verdict("anomalous", amap, 1.0, probs, ["blowhole", "crack"], 0.5)
    assert (verdict, kind) == ("defect:crack", "crack") and abs(conf - 0.9) < 1e-6 and len(regions) == 1
    probs[2, 4:8, 4:8], probs[0, 4:8, 4:8] = 0.05, 0.9  # the model sees nothing it knows there
    assert two_stage_verdict("anomalous", amap, 1.0, probs, ["blowhole", "crack"], 0.5)[0] == "unknown_anomaly"
