"""Three-stage search: stage spaces, validation split, cached scoring search, outputs, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import aoiflow.train
from aoiflow import data
from aoiflow.cli import app
from aoiflow.config import build_config, load_config
from aoiflow.evaluate import recalibrate
from aoiflow.runs import TrainedModel
from aoiflow.scoring import combined_score
from aoiflow.tune import (
    ImageCache, SearchSpace, TrialResult, TuneError, TuneSettings, base_params, search_scoring, split_trials,
    stage_anchors, stage_distributions, trial_config, tune, validation_set,
)


TINY_SPACE = SearchSpace(image_sizes=(32,), latent_sizes=(16, 32))


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_split_trials_gives_every_stage_a_trial_and_keeps_the_total():
    assert split_trials(20) == (10, 6, 4)
    for n in range(3, 41):
        parts = split_trials(n)
        assert sum(parts) == n and min(parts) >= 1
    with pytest.raises(TuneError, match="at least 3"):
        split_trials(2)


def _sample(dists: dict, n: int = 200) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        t = study.ask(dists)
        out.append(t.params)
        study.tell(t, 0.0)
    return out


def test_stage_one_covers_the_reference_grid_and_keeps_the_base_values():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace()
    anchor = {"w_con": 50, "w_enc": 1, "w_adv": 1, "latent_size": 100, "image_size": 128, "train_window": 11}
    d = stage_distributions(1, space, anchor, train_ssim=True)
    assert list(d["w_con"].choices) == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert list(d["latent_size"].choices) == [64, 100, 128, 256, 512, 1024]
    assert list(d["image_size"].choices) == [64, 128, 256]
    assert list(d["train_window"].choices) == list(range(8, 15))
    odd = dict(anchor, w_adv=7)  # a base value off the grid is still a legal stage-1 value
    assert 7 in stage_distributions(1, space, odd, True)["w_adv"].choices
    assert "train_window" not in stage_distributions(1, space, anchor, train_ssim=False)


def test_later_stages_narrow_around_their_anchor():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace()
    anchor = {"w_con": 95, "w_enc": 1, "w_adv": 40, "latent_size": 256, "image_size": 64, "train_window": 14}
    s2 = _sample(stage_distributions(2, space, anchor, True))
    s3 = _sample(stage_distributions(3, space, anchor, True))
    for params, radius, win in ((s2, 10, 2), (s3, 3, 1)):
        for p in params:
            assert 1 <= p["w_con"] <= 100 and abs(p["w_con"] - 95) <= radius
            assert 1 <= p["w_enc"] <= 1 + radius
            assert abs(p["w_adv"] - 40) <= radius
            assert p["image_size"] == 64
            assert 14 - win <= p["train_window"] <= 14
    assert {p["latent_size"] for p in s2} == {128, 256, 512}
    assert {p["latent_size"] for p in s3} == {256}
    # finer steps: stage 2 reaches weights the stage-1 grid (steps of 10) cannot
    assert any(p["w_adv"] % 10 for p in s2)


def test_stage_three_moves_between_anchors_of_different_shapes_in_one_stored_study(tmp_path):
    # Optuna's SQLite storage refuses categorical choices that change within a study; stage 3
    # refines anchors of different latent and image sizes round-robin (this failed on real data).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=optuna.samplers.RandomSampler(seed=0))
    anchors = [{"w_con": 31, "w_enc": 61, "w_adv": 90, "latent_size": 1024, "image_size": 256, "train_window": 8},
               {"w_con": 50, "w_enc": 1, "w_adv": 1, "latent_size": 100, "image_size": 128, "train_window": 11}]
    for i in range(4):
        anchor = anchors[i % 2]
        trial = study.ask(stage_distributions(3, SearchSpace(), anchor, train_ssim=True))
        assert (trial.params["latent_size"], trial.params["image_size"]) == (anchor["latent_size"], anchor["image_size"])
        study.tell(trial, 0.5)


def test_anchors_are_the_best_distinct_earlier_trials():
    base = build_config("ganomaly-l1-l1")

    def done(stage, trial, w_con, objective, state="complete"):
        params = dict(base_params(base), w_con=w_con)
        return TrialResult(stage, trial, params, state, objective=objective)

    earlier = [done(1, 0, 1, 0.6), done(1, 1, 10, 0.9), done(1, 2, 20, 0.9), done(1, 3, 30, None, "fail"),
               done(2, 0, 10, 0.95), done(2, 1, 40, 0.7)]
    assert stage_anchors(1, base, earlier, top_few=3) == [base_params(base)]
    assert [a["w_con"] for a in stage_anchors(2, base, earlier[:4], top_few=3)] == [10]  # tie: the earlier trial
    # the same settings found twice count once; failed trials never anchor
    assert [a["w_con"] for a in stage_anchors(3, base, earlier, top_few=3)] == [10, 20, 40]
    assert stage_anchors(2, base, [done(1, 0, 1, None, "fail")], top_few=3) == []


def test_validation_split_takes_a_fraction_of_each_defect_type(tile_subset):
    settings = TuneSettings(val_fraction=0.34, seed=5)
    val = validation_set(tile_subset, settings)
    kinds = sorted(p.parent.name for p in val.anomalies)
    assert kinds == ["blowhole", "crack"]  # one of three per type
    assert val.excluded_from_test == {p.resolve() for p in val.anomalies}
    assert "left out of the final test" in val.description
    assert validation_set(tile_subset, settings).anomalies == val.anomalies  # seeded


def test_validation_folder_is_read_and_checked(tile_subset, tmp_path):
    vdir = tmp_path / "val"
    shutil.copytree(tile_subset / "test" / "crack", vdir / "crack")
    shutil.copytree(tile_subset / "test" / "good", vdir / "good")
    val = validation_set(tile_subset, TuneSettings(val_dir=str(vdir)))
    assert len(val.anomalies) == 3 and len(val.extra_normals) == 4 and not val.excluded_from_test
    with pytest.raises(data.DataLayoutError, match="validation folder not found"):
        validation_set(tile_subset, TuneSettings(val_dir=str(tmp_path / "nowhere")))
    shutil.rmtree(vdir / "crack")
    with pytest.raises(data.DataLayoutError, match="no anomalies found"):
        validation_set(tile_subset, TuneSettings(val_dir=str(vdir)))


@pytest.mark.parametrize("normalise", ["none", "position"])
def test_cached_scoring_search_matches_the_real_scoring_path(tile_subset, tmp_path, tiny_config, normalise):
    cfg = tiny_config
    cfg.scoring.map_normalise = normalise
    run = tmp_path / "run"
    aoiflow.train.fit(tile_subset, run, cfg, progress=False)
    model = TrainedModel.load(run)
    normals = data.load_images([tile_subset / p for p in model.split["val"]], 1, 32).images
    anomaly_paths = data.list_images(tile_subset / "test" / "crack") + data.list_images(tile_subset / "test" / "blowhole")
    anomalies = data.load_images(anomaly_paths, 1, 32).images
    space = SearchSpace(lams=(0.0, 0.3, 0.8, 1.0), score_windows=(7, 9, 11))
    train = data.load_images([tile_subset / p for p in model.split["train"]], 1, 32).images
    choice = search_scoring(model, normals, anomalies, space, cfg, train)
    assert choice.lam in space.lams and choice.score_window in space.score_windows

    labels = np.r_[np.zeros(len(normals)), np.ones(len(anomalies))]

    def real_auroc(lam: float, window: int) -> float:
        # the production path: recalibrate on the run's held-out normals, then score every image
        settings = cfg.scoring.model_copy(update={"lam": lam, "ssim_window": window})
        m = recalibrate(model, tile_subset, settings)
        raw = m.score(torch.cat([normals, anomalies]))
        return roc_auc_score(labels, combined_score(raw.r, raw.l, m.calibration, lam))

    assert choice.objective == pytest.approx(real_auroc(choice.lam, choice.score_window), abs=1e-9)
    assert choice.base_auroc == pytest.approx(real_auroc(cfg.scoring.lam, cfg.scoring.ssim_window), abs=1e-9)
    for lam in space.lams:
        for window in space.score_windows:
            assert real_auroc(lam, window) <= choice.objective + 1e-9


def test_image_cache_reads_once_and_keeps_skips(tile_subset, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    paths = data.list_images(tile_subset / "test" / "good") + [bad]
    cache = ImageCache()
    with pytest.warns(UserWarning, match="broken.png"):
        first = cache(paths, 1, 32)
    plain = data.load_images(paths[:-1], 1, 32)
    assert torch.equal(first.images, plain.images)
    assert first.skipped and first.skipped[0][0] == bad
    again = cache(list(reversed(paths)), 1, 32)  # served from memory, in the order asked
    assert again.paths == list(reversed(paths[:-1]))


@pytest.fixture
def tiny_base(tiny_config):
    return tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 1})})


def test_search_writes_table_plot_best_config_and_a_fair_comparison(tile_subset, tmp_path, tiny_base):
    out = tmp_path / "search"
    base = tiny_base
    settings = TuneSettings(stage_trials=(2, 1, 1), val_fraction=0.34)
    outcome = tune(tile_subset, out, base, TINY_SPACE, settings, progress=False, log=lambda s: None)

    rows = _rows(out / "trials.csv")
    assert [r["stage"] for r in rows] == ["1", "1", "2", "3"]
    assert all(r["state"] == "complete" and 0 <= float(r["objective"]) <= 1 for r in rows)
    untuned = rows[0]
    assert untuned["baseline"] == "True"
    assert {k: int(untuned[k]) for k in base_params(base)} == base_params(base)
    assert (out / "objective.png").stat().st_size > 0

    best = load_config(out / "best.yaml")
    assert best.scoring.lam == outcome.best.best_lam
    assert best.loss.w_con == outcome.best.params["w_con"]
    assert max(float(r["objective"]) for r in rows) == pytest.approx(outcome.best.objective)
    # `aoiflow train --config best.yaml` takes the file as it is
    cli = CliRunner().invoke(app, ["train", str(tile_subset), "--config", str(out / "best.yaml"),
                                   "--out", str(tmp_path / "retrain"), "--quiet"])
    assert cli.exit_code == 0, cli.output

    # tuned and untuned are tested on the same images, none of which validated
    excluded = {(tile_subset / ln).resolve() for ln in (out / "validation_anomalies.txt").read_text().split("\n")
                if ln and not ln.startswith("#")}
    assert len(excluded) == 2
    assert set(outcome.test) == {"tuned", "untuned", "untuned_networks_tuned_scoring"}
    for label in outcome.test:
        scored = {Path(r["path"]).resolve() for r in _rows(out / f"test_{label}" / "scores.csv")}
        assert len(scored) == 10 - 2 and not scored & excluded
        assert outcome.test[label]["counts"] == {"normal": 4, "anomalous": 4, "skipped": 0}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_best_objective"]) == {"1", "2", "3"}
    assert "left out of the final test" in (out / "summary.md").read_text()
    # the best run folder works with `aoiflow test --exclude`
    res = CliRunner().invoke(app, ["test", str(out / "best_run"), str(tile_subset), "--quiet",
                                   "--exclude", str(out / "validation_anomalies.txt"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    tested = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert tested["counts"]["anomalous"] == 4 and tested["excluded"] == 2


def test_interrupted_search_resumes_where_it_stopped_with_the_same_trials(tile_subset, tmp_path, monkeypatch,
                                                                           tiny_base):
    base = tiny_base
    settings = TuneSettings(stage_trials=(2, 1, 1), val_fraction=0.34)
    quiet = dict(progress=False, log=lambda s: None)
    tune(tile_subset, tmp_path / "straight", base, TINY_SPACE, settings, **quiet)

    real_fit = aoiflow.train.fit
    calls: list[str] = []
    stopped = []

    def fit_that_stops(data_root, run_dir, config, **kw):
        calls.append(Path(run_dir).name)
        if Path(run_dir).name == "s2-000" and not stopped:
            stopped.append(True)
            raise KeyboardInterrupt  # the operator pressed Ctrl-C during the stage-2 trial
        return real_fit(data_root, run_dir, config, **kw)

    monkeypatch.setattr(aoiflow.train, "fit", fit_that_stops)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        tune(tile_subset, out, base, TINY_SPACE, settings, **quiet)
    assert [r["name"] for r in _rows(out / "trials.csv")] == ["s1-000", "s1-001"]

    with pytest.raises(TuneError, match="pass --resume"):
        tune(tile_subset, out, base, TINY_SPACE, settings, **quiet)
    changed = TuneSettings(stage_trials=(3, 1, 1), val_fraction=0.34)
    with pytest.raises(TuneError, match="cannot resume with different settings"):
        tune(tile_subset, out, base, TINY_SPACE, changed, resume=True, **quiet)

    calls.clear()
    tune(tile_subset, out, base, TINY_SPACE, settings, resume=True, **quiet)
    assert "s1-000" not in calls and "s1-001" not in calls  # finished trials are not trained again
    resumed, straight = _rows(out / "trials.csv"), _rows(tmp_path / "straight" / "trials.csv")
    keys = ("name", "w_con", "w_enc", "w_adv", "latent_size", "image_size", "train_window", "objective")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


def test_trial_config_applies_training_and_scoring_settings():
    base = build_config("ganomaly-ssim-ssim")
    cfg = trial_config(base, {"w_con": 7, "w_enc": 3, "w_adv": 90, "latent_size": 512, "image_size": 64,
                              "train_window": 13}, lam=0.3, score_window=9)
    assert (cfg.loss.w_con, cfg.loss.w_enc, cfg.loss.w_adv, cfg.loss.ssim_window) == (7, 3, 90, 13)
    assert (cfg.model.latent_size, cfg.model.image_size) == (512, 64)
    assert (cfg.scoring.lam, cfg.scoring.ssim_window) == (0.3, 9)
    assert base_params(build_config("ganomaly-l1-l1")) == {"w_con": 1, "w_enc": 1, "w_adv": 20,
                                                           "latent_size": 100, "image_size": 64}


def test_cli_rejects_bad_search_settings(tile_subset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(tile_subset), "--out", str(tmp_path / "t"), "--stage-trials", "4,x,2"])
    assert res.exit_code == 2 and "--stage-trials" in res.output
    res = runner.invoke(app, ["tune", str(tile_subset), "--out", str(tmp_path / "t"), "--image-sizes", "100"])
    assert res.exit_code == 2 and "image size 100" in res.output
    res = runner.invoke(app, ["tune", str(tmp_path / "missing"), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "missing" in res.output
    res = runner.invoke(app, ["test", str(tmp_path / "r"), str(tile_subset), "--exclude", str(tmp_path / "nolist.txt")])
    assert res.exit_code == 2 and "nolist.txt" in res.output


def test_auroc_standard_error_matches_the_spread_of_repeated_samples():
    from aoiflow.tune import auroc_standard_error

    rng = np.random.default_rng(0)
    n_pos, n_neg, shift = 80, 76, 0.95  # a separation that gives AUROC about 0.75
    aucs = [roc_auc_score(np.r_[np.zeros(n_neg), np.ones(n_pos)],
                          np.r_[rng.normal(0, 1, n_neg), rng.normal(shift, 1, n_pos)]) for _ in range(600)]
    predicted = auroc_standard_error(float(np.mean(aucs)), n_pos, n_neg)
    assert predicted == pytest.approx(np.std(aucs), rel=0.15)
    assert auroc_standard_error(0.75, 800, 760) < predicted / 3  # ten times the images, a third of the error


def test_l1_preset_searches_no_ssim_windows(tile_subset, tmp_path):
    base = build_config("ganomaly-l1-l1", overrides={
        "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
        "train": {"epochs": 1, "batch_size": 4, "seed": 3, "val_fraction": 0.25}})
    out = tmp_path / "l1"
    outcome = tune(tile_subset, out, base, TINY_SPACE, TuneSettings(stage_trials=(1, 1, 1), val_fraction=0.34),
                   progress=False, log=lambda s: None)
    rows = _rows(out / "trials.csv")
    assert all(r["train_window"] == "" and r["best_score_window"] == "" for r in rows)
    assert outcome.best_config.loss.contextual == "l1" and outcome.best_config.scoring.score == "l1"
    assert load_config(out / "best.yaml").scoring.lam == outcome.best.best_lam


def test_search_on_generated_surfaces_needs_no_shared_data(tmp_path, tiny_base):
    from aoiflow.synth import make_surface_dataset

    root = make_surface_dataset(tmp_path / "surf", n_train=16, n_test_good=4, n_per_defect=3, size=32)
    out = tmp_path / "search"
    outcome = tune(root, out, tiny_base, TINY_SPACE, TuneSettings(stage_trials=(1, 1, 1), val_fraction=0.34),
                   progress=False, log=lambda s: None)
    assert len(_rows(out / "trials.csv")) == 3
    # two defect kinds of three images: one of each validates, the other two of each are tested
    assert outcome.test["tuned"]["counts"] == {"normal": 4, "anomalous": 4, "skipped": 0}
    assert outcome.test["untuned"]["counts"] == outcome.test["tuned"]["counts"]
    assert load_config(out / "best.yaml").model.image_size == 32
