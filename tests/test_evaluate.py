import csv
import json

import numpy as np
import pytest
from scipy.stats import rankdata

from aoiflow.evaluate import evaluate, evaluate_run, score_test_set
from aoiflow.runs import RunError, TrainedModel
from aoiflow.train import fit


def _rank_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC from the Mann-Whitney U statistic: mean ranks for ties (sklearn is not used)."""
    labels = np.asarray(labels, bool)
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture
def tile_run(tile_subset, tmp_path, tiny_config):
    fit(tile_subset, tmp_path / "run", tiny_config, progress=False)
    return tmp_path / "run"


def test_evaluation_on_real_images_writes_everything(tile_run, tile_subset):
    bad = tile_subset / "test" / "crack" / "zz_truncated.jpg"
    bad.write_bytes(next((tile_subset / "test" / "crack").glob("*.jpg")).read_bytes()[:300])
    with pytest.warns(UserWarning, match="zz_truncated.jpg"):
        _, ev = evaluate_run(tile_run, tile_subset, progress=False)
    out = tile_run / "eval"
    for name in ("metrics.json", "scores.csv", "roc.png", "score_hist.png", "panel.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["counts"] == {"normal": 4, "anomalous": 6, "skipped": 1}
    assert saved["skipped"][0]["path"].endswith("zz_truncated.jpg")
    # the rate the threshold promises travels with the figures measured at it
    cal = TrainedModel.load(tile_run).calibration
    assert saved["calibration"]["threshold"] == saved["threshold"] == cal.threshold
    assert saved["calibration"]["expected_rate"] == pytest.approx(cal.expected_rate)
    labels = np.array([x.label for x in ev.per_image])
    assert saved["image_auroc"] == pytest.approx(_rank_auroc(labels, ev.a), abs=1e-9)
    # The evaluation keeps no maps: score the set again (same model, batches and threads: same maps).
    with pytest.warns(UserWarning, match="zz_truncated.jpg"):
        scored = score_test_set(TrainedModel.load(tile_run), tile_subset, progress=False)
    assert [(x.path, x.a) for x in scored.evaluation.per_image] == [(x.path, x.a) for x in ev.per_image]
    masks = scored.masks
    pixels = [i for i, m in enumerate(masks) if m is not None and (labels[i] == 0 or m.any())]
    truth = np.concatenate([masks[i].ravel() for i in pixels])
    values = np.concatenate([scored.maps[i].ravel() for i in pixels])
    assert saved["pixel_auroc"] == pytest.approx(_rank_auroc(truth, values), abs=1e-9)
    decided = ev.a > saved["threshold"]
    tp, fp, fn = (decided & (labels == 1)).sum(), (decided & (labels == 0)).sum(), (~decided & (labels == 1)).sum()
    assert saved["f1_at_threshold"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert set(saved["per_defect_type"]) == {"blowhole", "crack"}
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 10 and set(rows[0]) == {"path", "label", "defect_type", "R", "L", "A", "A_hat", "decision"}
    a_hat = np.array([float(r["A_hat"]) for r in rows])
    assert a_hat.min() == 0 and a_hat.max() == 1
    decisions = [r["decision"] == "anomalous" for r in rows]
    assert decisions == [float(r["A"]) > saved["threshold"] for r in rows]


def test_threshold_override_changes_decisions(tile_run, tile_subset):
    low = evaluate(tile_run, tile_subset, tile_run / "low", threshold=-1e9, progress=False)
    assert low["recall_at_threshold"] == 1.0 and low["false_positive_rate_at_threshold"] == 1.0


def test_unfinished_run_is_refused_with_a_fix(tile_run, tile_subset):
    import torch

    ckpt = torch.load(tile_run / "checkpoint.pt", weights_only=False)
    ckpt["calibration"] = None
    torch.save(ckpt, tile_run / "checkpoint.pt")
    (tile_run / "model.pt").unlink()  # a run stopped before its end has no finished model
    with pytest.raises(RunError, match="--resume"):
        evaluate(tile_run, tile_subset, progress=False)


def test_missing_run_or_test_folder(tmp_path, tile_run):
    with pytest.raises(RunError, match="not found"):
        evaluate(tmp_path / "nope", tmp_path, progress=False)
    with pytest.raises(ValueError, match="test"):
        evaluate(tile_run, tmp_path / "empty", progress=False)
