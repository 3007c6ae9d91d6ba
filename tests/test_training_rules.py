"""Known-answer tests of two training rules: the learning-rate schedule (fresh and resumed runs)
and the discriminator restart when it wins outright."""

import csv

import pytest
import torch

from aoiflow import train as train_module
from aoiflow.model import init_weights
from aoiflow.synth import make_surface_dataset
from aoiflow.train import fit, train_step


@pytest.fixture(scope="module")
def few_surfaces(tmp_path_factory):
    # 8 normals: 6 train (2 steps an epoch at batch 4) and 2 held out with tiny_config
    return make_surface_dataset(tmp_path_factory.mktemp("few"), n_train=8, n_test_good=0, n_per_defect=0, size=32)


def _lr_per_epoch(run) -> list[float]:
    return [float(row["lr"]) for row in csv.DictReader((run / "history.csv").open())]


@pytest.mark.parametrize(("schedule", "factors"), [("lambda", [1, 0.75, 0.5, 0.25]), ("constant", [1, 1, 1, 1])])
def test_learning_rate_per_epoch(few_surfaces, tmp_path, tiny_config, schedule, factors):
    tiny_config.train.epochs, tiny_config.train.lr_schedule = 4, schedule
    fit(few_surfaces, tmp_path / "run", tiny_config, progress=False)
    # linear decay: epoch e (1-based) of E runs at lr * (1 - (e - 1) / E)
    assert _lr_per_epoch(tmp_path / "run") == pytest.approx([tiny_config.train.lr * f for f in factors])


def test_resuming_with_more_epochs_never_raises_the_learning_rate(few_surfaces, tmp_path, tiny_config):
    """`train --resume --epochs 6` on a finished 3-epoch run used to rebuild one decay over 6
    epochs: the rates went 1, 2/3, 1/3, 0 (the rate left in the optimiser), then up to 1/3, 1/6."""
    tiny_config.train.epochs = 3
    fit(few_surfaces, tmp_path / "run", tiny_config, progress=False)
    longer = tiny_config.model_copy(deep=True)
    longer.train.epochs = 6
    fit(few_surfaces, tmp_path / "run", longer, resume=True, progress=False)
    lrs = [v / tiny_config.train.lr for v in _lr_per_epoch(tmp_path / "run")]
    assert lrs[:3] == pytest.approx([1, 2 / 3, 1 / 3])
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs
    # the decay goes on from the rate last used, down towards 0 over the 3 new epochs
    assert lrs[3:] == pytest.approx([1 / 3, 2 / 9, 1 / 9])


def _fake_discriminator_loss(value: float):
    """A discriminator loss fixed at ``value`` with zero gradients (Adam then leaves D unchanged)."""
    return lambda real, fake, smoothing=0.0: (real.sum() + fake.sum()) * 0.0 + value


@pytest.mark.parametrize(("loss_d", "restarted"), [(0.0, True), (9e-6, True), (2e-5, False)])
def test_discriminator_restarts_when_it_wins_outright(monkeypatch, tiny_config, loss_d, restarted):
    state = train_module._build_state(tiny_config, 1)
    d = state.discriminator
    with torch.no_grad():
        for p in d.parameters():
            p.fill_(0.3)  # far from a fresh initialisation (N(0, 0.02) convs, BN 1 +- 0.02, biases 0)
    monkeypatch.setattr(train_module, "discriminator_loss", _fake_discriminator_loss(loss_d))
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    torch.manual_seed(7)
    losses = train_step(state, x, tiny_config)
    assert losses["loss_d"] == pytest.approx(loss_d)
    # the known answer: a restart is init_weights drawn from the same random state
    reference = train_module._build_state(tiny_config, 1).discriminator
    reference.load_state_dict(d.state_dict())
    torch.manual_seed(7)
    init_weights(reference)
    after = dict(d.named_parameters())
    if restarted:
        assert all(torch.equal(p, after[k]) for k, p in reference.named_parameters())
    else:
        assert all(torch.equal(p, torch.full_like(p, 0.3)) for p in after.values())


def test_bf16_autocast_step_matches_fp32_closely():
    """The same first step from the same weights: bfloat16 convolutions change the losses by a
    little (8-bit mantissa), not by a different training; weights stay fp32."""
    from aoiflow.config import build_config
    from aoiflow.train import _build_state, train_step

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = build_config("ganomaly-ssim-ssim", overrides={
            "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
            "train": {"batch_size": 4, "seed": 3, "precision": precision}, "loss": {"ssim_window": 7}})
        state = _build_state(cfg, 1)
        x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        losses[precision] = train_step(state, x, cfg)
        assert all(p.dtype == torch.float32 for p in state.generator.parameters())
    for key in ("loss_con", "loss_d", "loss_g"):
        assert losses["bf16"][key] == pytest.approx(losses["fp32"][key], rel=0.05), key
