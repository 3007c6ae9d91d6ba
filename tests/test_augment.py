"""Augmentations that keep normal parts normal, and the optimiser-step budget for small sets."""

from __future__ import annotations

import torch

from aoiflow.augment import augment_batch
from aoiflow.config import build_config
from aoiflow.runs import load_checkpoint
from aoiflow.train import fit


def _draws(kinds, n=200, seed=0):
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(n, 1, 1, 1)
    return x, augment_batch(x, kinds, torch.Generator().manual_seed(seed))


def test_flips_and_turns_give_exactly_the_transformed_image():
    x, out = _draws(["hflip", "vflip", "rot90"])
    img = x[0, 0]
    # Flips then a turn can reach exactly the 8 symmetries of the square, and nothing else.
    symmetries = {tuple(torch.rot90(f, k).flatten().tolist())
                  for f in (img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)) for k in range(4)}
    seen = {tuple(o[0].flatten().tolist()) for o in out}
    assert seen == symmetries and len(symmetries) == 8


def test_shift_moves_by_at_most_one_sixteenth_with_reflected_borders():
    x = torch.rand(1, 1, 32, 32).repeat(100, 1, 1, 1)
    out = augment_batch(x, ["shift"], torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x[:1], (2, 2, 2, 2), mode="reflect")[0, 0]
    crops = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)}
    for o in out:
        assert any(torch.equal(o[0], c) for c in crops.values())  # one of the 25 shifts of up to 2 px
    assert len({tuple(o.flatten()[:8].tolist()) for o in out}) > 10


def test_no_augmentation_is_the_identity_and_draws_are_seeded():
    x, out = _draws([])
    assert out is x
    _, a = _draws(["hflip", "rot90"], seed=5)
    _, b = _draws(["hflip", "rot90"], seed=5)
    assert torch.equal(a, b)


def test_min_steps_trains_more_epochs_on_a_small_set(tile_subset, tmp_path):
    # 12 normals, 3 held out: 9 training images at batch 4 = 3 steps an epoch; 10 steps -> 4 epochs.
    cfg = build_config("ganomaly-ssim-ssim", overrides={
        "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
        "train": {"epochs": 1, "batch_size": 4, "val_fraction": 0.25, "min_steps": 10, "augment": ["hflip", "shift"]},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}})
    fit(tile_subset, tmp_path / "run", cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 4 and len(ckpt["history"]) == 4
    assert ckpt["config"]["train"]["epochs"] == 4  # recorded, so a resume keeps the same schedule
