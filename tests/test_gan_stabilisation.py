"""GAN stabilisation settings: generator EMA, spectral norm, one-sided label smoothing (train.*)."""

import math

import pytest
import torch

from aoiflow.config import ConfigError, build_config
from aoiflow.losses import discriminator_loss
from aoiflow.model import add_spectral_norm, build_networks, init_weights
from aoiflow.runs import RunError, TrainedModel, load_checkpoint
from aoiflow.synth import make_surface_dataset
from aoiflow.train import _build_state, fit, train_step


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    return make_surface_dataset(tmp_path_factory.mktemp("surf"), n_train=16, n_test_good=4, n_per_defect=2, size=40)


def _with_train(config, **changes):
    return config.model_copy(update={"train": config.train.model_copy(update=changes)})


def test_smoothed_real_target_moves_the_optimum_to_one_minus_smoothing():
    # d/dz BCE(z, t) = sigmoid(z) - t: zero where sigmoid(z) = t = 0.9, i.e. z = log 9
    z = torch.tensor([math.log(9.0)], requires_grad=True)
    for smoothing, gradient in ((0.1, 0.0), (0.0, 0.9 - 1.0)):
        z.grad = None
        discriminator_loss(z, torch.tensor([-50.0]), smoothing).backward()
        assert float(z.grad) == pytest.approx(0.5 * gradient, abs=1e-6)
    # known value: real cost -(0.9 log 0.9 + 0.1 log 0.1) at its optimum, fake cost ~0
    assert float(discriminator_loss(torch.tensor([math.log(9.0)]), torch.tensor([-50.0]), 0.1)) == pytest.approx(
        0.5 * -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), rel=1e-5)


def test_spectral_norm_bounds_every_convolution_and_survives_a_restart():
    _, d = build_networks(32, 1, 16, 8, seed=0)
    add_spectral_norm(d)
    d.train()
    x = torch.randn(4, 1, 32, 32)
    for _ in range(30):  # power iterations, one per forward pass
        d.logits(x)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=0.05)
    before = convs[0].parametrizations.weight.original.clone()
    init_weights(d)  # what a discriminator restart does: draws the raw weights again
    assert not torch.equal(before, convs[0].parametrizations.weight.original)


def test_generator_ema_is_the_known_average_of_the_steps(tiny_config):
    cfg = _with_train(tiny_config, generator_ema=0.75)
    state = _build_state(cfg, 1)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    snapshots = []
    for _ in range(3):
        train_step(state, x, cfg)
        snapshots.append({k: v.detach().clone() for k, v in state.generator.state_dict().items()})
    w1, w2, w3 = (s["decoder.body.0.weight"] for s in snapshots)
    # torch's EMA: the first update copies, later ones blend: e = 0.75 e + 0.25 w
    expected = 0.75 * (0.75 * w1 + 0.25 * w2) + 0.25 * w3
    torch.testing.assert_close(state.kept_generator.state_dict()["decoder.body.0.weight"], expected)
    assert not torch.allclose(state.kept_generator.state_dict()["decoder.body.0.weight"], w3)


def test_a_run_with_every_setting_keeps_the_average_and_resumes_to_it(surfaces, tmp_path, tiny_config):
    cfg = _with_train(tiny_config, generator_ema=0.9, spectral_norm=True, label_smoothing=0.1, epochs=2)
    fit(surfaces, tmp_path / "straight", cfg, progress=False)
    one = _with_train(cfg, epochs=1)
    fit(surfaces, tmp_path / "resumed", one, progress=False)
    fit(surfaces, tmp_path / "resumed", cfg, resume=True, progress=False)
    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    model = TrainedModel.load(tmp_path / "straight")
    kept = {f"module.{k}": v for k, v in model.generator.state_dict().items()}
    for k, v in kept.items():  # model.pt holds the average, not the last step's weights
        torch.testing.assert_close(v, straight["generator_ema"][k])
    assert any(not torch.equal(straight["generator"][k], model.generator.state_dict()[k]) for k in straight["generator"])
    assert "encoder.body.0.parametrizations.weight.original" in straight["discriminator"]
    # 2 epochs in one go = 1 epoch then 1 resumed (schedules differ: compare the resumed run's own EMA state)
    # a run folder without model.pt (a run from before it existed) also gives the average
    (tmp_path / "straight" / "model.pt").unlink()
    fallback = TrainedModel.load(tmp_path / "straight").generator.state_dict()
    for k, v in model.generator.state_dict().items():
        torch.testing.assert_close(fallback[k], v)
    # 12 training images at batch 4: 3 steps an epoch, 6 averaged in both runs
    assert int(resumed["generator_ema"]["n_averaged"]) == int(straight["generator_ema"]["n_averaged"]) == 6


@pytest.mark.parametrize(("field", "value"), [("generator_ema", 1.0), ("label_smoothing", 0.5)])
def test_out_of_range_settings_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        build_config("ganomaly-ssim-ssim", overrides={"train": {field: value}})


@pytest.mark.parametrize("setting", ["spectral_norm", "generator_ema"])
def test_resuming_with_a_setting_switched_is_refused_by_name(surfaces, tmp_path, tiny_config, setting):
    fit(surfaces, tmp_path / "run", _with_train(tiny_config, epochs=1), progress=False)
    switched = _with_train(tiny_config, **{setting: True if setting == "spectral_norm" else 0.9})
    with pytest.raises(RunError, match=f"train.{setting} on"):
        fit(surfaces, tmp_path / "run", switched, resume=True, progress=False)
