"""Shared fixtures: small real subsets of ../shared/data (copied to a temp folder) and tiny configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aoiflow.config import build_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def shared_set(name: str) -> Path:
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"real test images not available: {root} is missing (it sits beside the checkout)")
    return root


def _copy_some(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file())[:n]
    return [Path(shutil.copy(p, dst / p.name)) for p in files]


def make_tile_subset(root: Path) -> Path:
    """A handful of magnetic-tile images in MVTec layout: 12 train, 4 good, 3 blowhole and 3 crack with masks."""
    src = shared_set("magnetictile_tile")
    _copy_some(src / "train" / "good", root / "train" / "good", 12)
    _copy_some(src / "test" / "good", root / "test" / "good", 4)
    for kind in ("blowhole", "crack"):
        for img in _copy_some(src / "test" / kind, root / "test" / kind, 3):
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "ground_truth" / kind / f"{img.stem}.png", root / "ground_truth" / kind)
    return root


@pytest.fixture
def tile_subset(tmp_path: Path) -> Path:
    return make_tile_subset(tmp_path / "tile")


@pytest.fixture(scope="module")
def module_tile_subset(tmp_path_factory) -> Path:
    """``tile_subset`` made once for a whole test module (for module-scoped trained runs)."""
    return make_tile_subset(tmp_path_factory.mktemp("tile"))


@pytest.fixture
def deeppcb_root() -> Path:
    """The shared DeepPCB set (read-only; boxes in annotations_bbox/defect); skips when absent."""
    return shared_set("deeppcb_pcb")


def make_tiny_config():
    """A config that trains in about a second on the CPU."""
    return build_config("ganomaly-ssim-ssim", overrides={
        "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
        "train": {"epochs": 2, "batch_size": 4, "seed": 3, "val_fraction": 0.25},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}})


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture(scope="module")
def module_tiny_config():
    """``tiny_config`` shared by a module's module-scoped fixtures; tests that change settings
    take their own ``tiny_config``."""
    return make_tiny_config()
