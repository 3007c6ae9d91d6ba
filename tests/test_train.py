import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from aoiflow.config import build_config
from aoiflow.runs import RunError, TrainedModel, load_checkpoint
from aoiflow.synth import add_defect, make_surface_dataset, normal_surface
from aoiflow import train as train_module
from aoiflow.train import TrainingInterrupted, fit, split_holdout


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    return make_surface_dataset(tmp_path_factory.mktemp("surf"), n_train=24, n_test_good=6, n_per_defect=3, size=48)


def test_holdout_split_is_deterministic_and_disjoint(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(20)]
    tr, va = split_holdout(paths, 0.1, seed=5)
    assert len(va) == 2 and not set(tr) & set(va) and len(tr) + len(va) == 20
    assert split_holdout(paths, 0.1, seed=5) == (tr, va)
    with pytest.raises(ValueError, match="at least 2"):
        split_holdout(paths[:1], 0.1, 0)


def test_fit_writes_run_with_calibration(surfaces, tmp_path, tiny_config):
    fit(surfaces, tmp_path / "run", tiny_config, progress=False)
    for name in ("checkpoint.pt", "config.yaml", "history.csv"):
        assert (tmp_path / "run" / name).is_file()
    model = TrainedModel.load(tmp_path / "run")
    assert model.channels == 1 and model.epoch == 2
    cal = model.calibration
    assert cal.n_images == 6 and cal.r_std > 0 and cal.l_std > 0 and np.isfinite(cal.threshold)
    assert cal.pixel_threshold is not None and cal.pixel_threshold > 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss_g") and len(history) == 3


def test_same_seed_gives_the_same_scores(surfaces, tmp_path, tiny_config):
    fit(surfaces, tmp_path / "a", tiny_config, progress=False)
    fit(surfaces, tmp_path / "b", tiny_config, progress=False)
    a, b = TrainedModel.load(tmp_path / "a"), TrainedModel.load(tmp_path / "b")
    x = torch.rand(3, 1, 32, 32)
    ra = a.score(x)
    rb = b.score(x)
    np.testing.assert_array_equal(ra.r, rb.r)
    np.testing.assert_array_equal(ra.l, rb.l)


def test_resume_continues_to_the_same_result(surfaces, tmp_path, tiny_config, monkeypatch):
    three = tiny_config.model_copy(deep=True)
    three.train.epochs = 3
    fit(surfaces, tmp_path / "straight", three, progress=False)

    # Interrupt the second run in its third epoch (18 training images, batch 4 -> 5 steps an epoch).
    calls = {"n": 0}
    real_step = train_module.train_step

    def crash_in_epoch_three(*args):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", crash_in_epoch_three)
    with pytest.raises(TrainingInterrupted, match="2 of 3 epochs finished"):
        fit(surfaces, tmp_path / "stopped", three, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert load_checkpoint(tmp_path / "stopped")["epoch"] == 2
    with pytest.raises(RunError, match="--resume"):
        fit(surfaces, tmp_path / "stopped", three, progress=False)
    fit(surfaces, tmp_path / "stopped", three, resume=True, progress=False)
    s, r = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert r["epoch"] == 3 and len(r["history"]) == 3
    for k in s["generator"]:
        torch.testing.assert_close(s["generator"][k], r["generator"][k])


def test_resume_refuses_another_model_shape(surfaces, tmp_path, tiny_config):
    fit(surfaces, tmp_path / "run", tiny_config, progress=False)
    wider = tiny_config.model_copy(deep=True)
    wider.model.base_width = 16
    with pytest.raises(RunError, match="different model shape"):
        fit(surfaces, tmp_path / "run", wider, resume=True, progress=False)


@pytest.mark.parametrize("preset", ["ganomaly-l1-l1", "ganomaly-ssim-ssim"])
def test_short_training_separates_an_obvious_defect(tmp_path, preset):
    """A few epochs on generated surfaces must already rank strong defects above normals."""
    root = make_surface_dataset(tmp_path / "d", n_train=48, n_test_good=0, n_per_defect=0, size=32, seed=1)
    cfg = build_config(preset, overrides={
        "model": {"image_size": 32, "base_width": 16, "latent_size": 32},
        "train": {"epochs": 12, "batch_size": 8, "lr": 1e-3, "seed": 0},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}})
    fit(root, tmp_path / "run", cfg, progress=False)
    model = TrainedModel.load(tmp_path / "run")
    rng = np.random.default_rng(123)
    normal = [normal_surface(rng, 32) for _ in range(16)]
    defect = [add_defect(normal_surface(rng, 32), "stain", rng, strength=3.0)[0] for _ in range(16)]
    x = torch.tensor(np.stack(normal + defect), dtype=torch.float32)[:, None]
    raw = model.score(x)
    labels = [0] * 16 + [1] * 16
    assert roc_auc_score(labels, raw.r) > 0.9


def test_fit_like_reuses_identical_training_and_rescores(surfaces, tmp_path, tiny_config):
    from aoiflow.train import fit_like

    fit(surfaces, tmp_path / "ssim", tiny_config, progress=False)
    l1_scored = tiny_config.model_copy(deep=True)
    l1_scored.scoring.score = "l1"
    fit_like(tmp_path / "ssim", surfaces, tmp_path / "l1", l1_scored, progress=False)
    a, b = load_checkpoint(tmp_path / "ssim"), load_checkpoint(tmp_path / "l1")
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k])
    assert b["config"]["scoring"]["score"] == "l1" and a["calibration"] != b["calibration"]
    trained = tiny_config.model_copy(deep=True)
    trained.loss.w_con = 5.0  # different training: trains anew
    fit_like(tmp_path / "ssim", surfaces, tmp_path / "other", trained, progress=False)
    c = load_checkpoint(tmp_path / "other")
    assert any(not torch.equal(a["generator"][k], c["generator"][k]) for k in a["generator"])
