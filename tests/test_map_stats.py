"""Per-position map statistics (scoring.map_normalise: position): known answers and one path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aoiflow.predict import Inspector
from aoiflow.runs import TrainedModel
from aoiflow.scoring import MapStats, fit_map_stats, score_batch
from aoiflow.train import fit


def test_stats_and_their_floor_on_known_maps():
    # Position (0, 0) alternates 0 / 2 (mean 1, sample spread sqrt(4/3)); position (0, 1) never varies.
    maps = torch.zeros(4, 1, 2, 2)
    maps[::2, 0, 0, 0] = 2.0
    maps[:, 0, 0, 1] = 0.5
    stats = fit_map_stats(maps)
    spread = (4 / 3) ** 0.5
    assert stats.mean.flatten().tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    floor = 0.25 * spread / 4 + 1e-6  # a quarter of the mean spread over the four positions
    assert stats.std.flatten().tolist() == pytest.approx([spread, floor, floor, floor])
    z = stats.apply(torch.full((1, 1, 2, 2), 1.5))
    assert z.flatten().tolist() == pytest.approx([0.5 / spread, 1.0 / floor, 1.5 / floor, 1.5 / floor], rel=1e-5)


def test_position_scoring_needs_its_statistics(tiny_config):
    from aoiflow.model import Generator

    settings = tiny_config.scoring.model_copy(update={"map_normalise": "position"})
    g = Generator(32, 1, 16, 8)
    with pytest.raises(ValueError, match="no per-position map statistics"):
        score_batch(g, torch.rand(1, 1, 32, 32), settings)


def test_a_run_with_position_scoring_stores_and_uses_its_statistics(tile_subset, tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    cfg.scoring.map_normalise = "position"
    fit(tile_subset, tmp_path / "run", cfg, progress=False)
    model = TrainedModel.load(tmp_path / "run")
    assert model.map_stats is not None and tuple(model.map_stats.mean.shape) == (32, 32)
    # Every map the run produces is in units of the normals' spread: predict's map of an image
    # equals the plain map normalised by the stored statistics.
    x = torch.rand(3, model.channels, 32, 32)
    plain = model.config.scoring.model_copy(update={"map_normalise": "none"})
    _, _, raw_map, _ = score_batch(model.generator, x, plain)
    _, _, a, amap = Inspector.load(tmp_path / "run").score_tensor(x)
    torch.testing.assert_close(amap, model.map_stats.apply(raw_map))
    assert np.isfinite(a).all()
    # The held-out normals set the threshold; the statistics came from the training images.
    assert model.calibration.n_images == len(model.split["val"])
    # The exported graph carries the statistics and gives the same map and score.
    from aoiflow.export import ExportedModel, export_onnx

    exported = ExportedModel(export_onnx(tmp_path / "run", tmp_path / "m.onnx"))
    _, _, ea, emap = exported.score(x.numpy())
    np.testing.assert_allclose(emap, amap.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ea, a, rtol=1e-3, atol=1e-3)


def test_round_trip_of_the_statistics():
    stats = MapStats(torch.rand(4, 4), torch.rand(4, 4) + 0.1)
    back = MapStats.from_dict(stats.to_dict())
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.std, stats.std)
    assert MapStats.from_dict(None) is None
