"""What a search may vary (SearchSpace), how it runs (TuneSettings), and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

STAGE_SHARES = (0.5, 0.3, 0.2)  # default split of --trials over the three stages


class TuneError(ValueError):
    """Bad search settings or a search folder that cannot be used; the message says which."""


@dataclass(frozen=True)
class SearchSpace:
    """What may vary. Defaults are the reference's space; narrow it to fit a CPU budget."""

    weights: tuple[int, ...] = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # stage-1 grid of each w
    weight_range: tuple[int, int] = (1, 100)
    latent_sizes: tuple[int, ...] = (64, 100, 128, 256, 512, 1024)
    image_sizes: tuple[int, ...] = (64, 128, 256)
    train_windows: tuple[int, ...] = (8, 9, 10, 11, 12, 13, 14)
    lams: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
    score_windows: tuple[int, ...] = (8, 9, 10, 11, 12, 13, 14)

    def check(self) -> None:
        for name in ("weights", "latent_sizes", "image_sizes", "train_windows", "lams", "score_windows"):
            if not getattr(self, name):
                raise TuneError(f"search space: {name} is empty")
        for s in self.image_sizes:
            if s < 32 or s > 256 or s & (s - 1):
                raise TuneError(f"search space: image size {s} is not a power of two from 32 to 256")
        if any(not 0 <= v <= 1 for v in self.lams):
            raise TuneError("search space: lambda values must lie in 0-1")
        if any(w < 3 or w > 31 for w in (*self.train_windows, *self.score_windows)):
            raise TuneError("search space: SSIM windows must lie in 3-31")


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs: trials per stage, how many best trials stage 3 refines, validation."""

    stage_trials: tuple[int, int, int] = (10, 6, 4)
    top_few: int = 3
    val_fraction: float = 0.2  # of each defect type under DATA/test, used when no val_dir is given
    val_dir: str | None = None
    seed: int = 0

    def check(self) -> None:
        if len(self.stage_trials) != 3 or any(n < 1 for n in self.stage_trials):
            raise TuneError(f"stage trials must be three counts of at least 1, got {self.stage_trials}")
        if self.top_few < 1:
            raise TuneError("top_few must be at least 1")
        if self.val_dir is None and not 0 < self.val_fraction < 1:
            raise TuneError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")


def split_trials(total: int) -> tuple[int, int, int]:
    """Share ``total`` trials over the stages (half, 30 %, the rest), at least one each."""
    if total < 3:
        raise TuneError(f"--trials must be at least 3 (one per stage), got {total}")
    s1 = max(1, min(math.ceil(total * STAGE_SHARES[0]), total - 2))
    s2 = max(1, min(round(total * STAGE_SHARES[1]), total - s1 - 1))
    return s1, s2, total - s1 - s2
