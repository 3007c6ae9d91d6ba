"""Training with DistributedDataParallel under torchrun, two processes on this machine (gloo):
the same effective batch gives one process's losses and weights (to float rounding), a run
resumed from rank 0's checkpoint continues it exactly, and errors reach every process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from aoiflow.config import save_config
from aoiflow.runs import TrainedModel, load_checkpoint
from aoiflow.train import fit


def _torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "aoiflow.cli", "train", *args, "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture
def config(tiny_config, tmp_path):
    # 12 images - 3 held out = 9: batches of 3 split 2 + 1 over the processes, so the loss weights
    # of uneven shares are exercised; a constant rate, so 1 epoch + 1 resumed equals 2 straight.
    cfg = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(
        update={"batch_size": 3, "lr_schedule": "constant", "epochs": 2})})
    save_config(cfg, tmp_path / "tiny.yaml")
    return cfg


def test_two_processes_train_like_one_and_resume_from_rank_0(tile_subset, tmp_path, config):
    fit(tile_subset, tmp_path / "one", config, progress=False)  # the known answer: one process

    run = tmp_path / "two"
    common = [str(tile_subset), "--config", str(tmp_path / "tiny.yaml"), "--out", str(run)]
    first = _torchrun(*common, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("trained ") == 1  # rank 0 alone reports (and writes)
    assert len(load_checkpoint(run)["history"]) == 1
    resumed = _torchrun(*common, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml", "history.csv", "model.pt"]
    for net in ("generator", "discriminator"):
        for name, tensor in one[net].items():  # BatchNorm running statistics included
            assert torch.allclose(two[net][name].float(), tensor.float(), rtol=1e-4, atol=1e-5), (net, name)
    for a, b in zip(one["history"], two["history"], strict=True):
        for k in ("loss_g", "loss_con", "loss_enc", "loss_adv", "loss_d", "val_con"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), k
    assert two["calibration"]["threshold"] == pytest.approx(one["calibration"]["threshold"], rel=1e-4)
    assert TrainedModel.load(run).epoch == 2


def test_an_error_on_rank_0_ends_every_process_with_its_message(tile_subset, tmp_path, config):
    res = _torchrun(str(tile_subset), "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "none"),
                    "--resume")
    assert res.returncode != 0
    assert res.stderr.count("nothing to resume") == 2  # rank 1 gets rank 0's error instead of waiting
