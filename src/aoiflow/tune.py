"""Three-stage random parameter search for GANomaly (``aoiflow tune``).

Stage 1 samples the whole training space at random (loss weights on a coarse grid); stage 2
samples a narrower range at finer steps around the best stage-1 trial; stage 3 refines the best
few trials of stages 1-2 even more tightly. Every trial trains one model; the scoring side
(lambda, score SSIM window, and the z-score normalisation they imply) is then searched on that
model's cached reconstructions and latents, which costs seconds, not training runs.

The objective is image AUROC on a validation set that the final test never sees: the run's
normals held out from ``train/good`` plus labelled anomalies (a ``--val`` folder, or a stated
fraction of the test anomalies, which are then left out of the final test).

Optuna keeps the study in SQLite (``DIR/study.db``, one study per stage), so an interrupted
search resumes where it stopped; a trial caught mid-training continues from its checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.config import Config, save_config
from aoiflow.fileio import atomic_write_text
from aoiflow.runs import TrainedModel
from aoiflow.calibrate import combined_score, fit_calibration
from aoiflow.scoring import anomaly_map, pool_map, score_images

STAGE_SHARES = (0.5, 0.3, 0.2)  # default split of --trials over the three stages
TRIAL_FIELDS = ["stage", "trial", "name", "state", "baseline", "w_con", "w_enc", "w_adv", "latent_size", "image_size",
                "train_window", "objective", "best_lam", "best_score_window", "val_auroc_base_scoring",
                "train_seconds", "seconds", "error"]


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


# ---------------------------------------------------------------- validation split


@dataclass
class ValidationSet:
    """Labelled images that judge trials (with the run's held-out normals) and what the final test leaves out."""

    anomalies: list[Path]
    extra_normals: list[Path]
    excluded_from_test: set[Path]
    description: str


def validation_set(data_root: str | Path, settings: TuneSettings) -> ValidationSet:
    """Anomalies from ``--val DIR`` (``DIR/<defect>/``; ``DIR/good`` adds normals) or, without it,
    a seeded, per-defect-type fraction of ``DATA/test`` anomalies that the final test leaves out."""
    if settings.val_dir:
        root = Path(settings.val_dir)
        if not root.is_dir():
            raise data.DataLayoutError(f"{root}: validation folder not found")
        kinds = sorted(p for p in root.iterdir() if p.is_dir())
        anomalies = [img for k in kinds if k.name != data.NORMAL_LABEL for img in data.list_images(k)]
        normals = data.list_images(root / data.NORMAL_LABEL) if (root / data.NORMAL_LABEL).is_dir() else []
        if not anomalies:
            raise data.DataLayoutError(f"{root}: no anomalies found; expected {root}/<defect>/*.png")
        return ValidationSet(anomalies, normals, set(),
                             f"held-out train/good normals + {len(normals)} normals and {len(anomalies)} anomalies "
                             f"from {root}; the final test uses all of DATA/test")
    rng = np.random.default_rng(settings.seed)
    picked: list[Path] = []
    by_kind: dict[str, list[Path]] = {}
    for s in data.test_samples(data_root):
        if s.label == 1:
            by_kind.setdefault(s.defect_type, []).append(s.path)
    if not by_kind:
        raise data.DataLayoutError(f"{data_root}/test: no anomalies to validate on; give --val DIR")
    for kind in sorted(by_kind):
        paths = sorted(by_kind[kind])
        n = max(1, round(len(paths) * settings.val_fraction))
        if n >= len(paths):
            continue  # keep a type with one image in the test rather than lose it there
        picked += [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]
    if not picked:
        raise data.DataLayoutError(f"{data_root}/test: too few anomalies to set a fraction aside; give --val DIR")
    return ValidationSet(picked, [], {p.resolve() for p in picked},
                         f"held-out train/good normals + {len(picked)} test anomalies "
                         f"({settings.val_fraction:.0%} of each defect type, seed {settings.seed}), "
                         "left out of the final test")


def auroc_standard_error(auroc: float, n_anomalous: int, n_normal: int) -> float:
    """Standard error of an AUROC from its value and class sizes (Hanley & McNeil, 1982): how far
    apart two trials must be before a validation set of this size can tell them apart. Written
    here: scikit-learn has no AUROC uncertainty, and the formula is three lines."""
    a, n1, n0 = auroc, n_anomalous, n_normal
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt(max(0.0, a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))


# ---------------------------------------------------------------- stages


def _categorical(values, extra=None):
    import optuna

    return optuna.distributions.CategoricalDistribution(sorted({*values, *([extra] if extra is not None else [])}))


def _ints_around(value: int, radius: int, lo: int, hi: int):
    import optuna

    return optuna.distributions.IntDistribution(max(lo, value - radius), min(hi, value + radius))


def _neighbours(values: tuple[int, ...], value: int) -> list[int]:
    ordered = sorted({*values, value})
    i = ordered.index(value)
    return ordered[max(0, i - 1) : i + 2]


def stage_distributions(stage: int, space: SearchSpace, anchor: dict[str, int], train_ssim: bool) -> dict:
    """Optuna distributions for one trial. Stage 1: the whole space (``anchor`` = the base config,
    so its values are always allowed). Stage 2: weights within +-10 at step 1, the neighbouring
    latent sizes, window +-2, image size fixed. Stage 3: weights +-3, latent and size fixed, window +-1."""
    lo, hi = space.weight_range
    if stage == 1:
        dists = {w: _categorical(space.weights, anchor[w]) for w in ("w_con", "w_enc", "w_adv")}
        dists["latent_size"] = _categorical(space.latent_sizes, anchor["latent_size"])
        dists["image_size"] = _categorical(space.image_sizes, anchor["image_size"])
        if train_ssim:
            dists["train_window"] = _categorical(space.train_windows, anchor["train_window"])
        return dists
    radius, window_radius = (10, 2) if stage == 2 else (3, 1)
    dists = {w: _ints_around(int(anchor[w]), radius, lo, hi) for w in ("w_con", "w_enc", "w_adv")}
    # A fixed value is a one-point integer range: Optuna refuses categorical choices that change
    # between trials of one study, and stage 3 moves between anchors of different sizes.
    if stage == 2:
        dists["latent_size"] = _categorical(_neighbours(space.latent_sizes, anchor["latent_size"]))
    else:
        dists["latent_size"] = _ints_around(int(anchor["latent_size"]), 0, 1, 4096)
    dists["image_size"] = _ints_around(int(anchor["image_size"]), 0, 32, 256)
    if train_ssim:
        w_lo, w_hi = min(space.train_windows), max(space.train_windows)
        dists["train_window"] = _ints_around(int(anchor["train_window"]), window_radius, w_lo, w_hi)
    return dists


def base_params(config: Config) -> dict[str, int]:
    """The training settings a trial varies, as they stand in ``config``."""
    params = {"w_con": config.loss.w_con, "w_enc": config.loss.w_enc, "w_adv": config.loss.w_adv,
              "latent_size": config.model.latent_size, "image_size": config.model.image_size}
    params = {k: int(round(v)) for k, v in params.items()}
    if config.loss.contextual == "ssim":
        params["train_window"] = config.loss.ssim_window
    return params


def trial_config(base: Config, params: dict[str, Any], lam: float | None = None,
                 score_window: int | None = None) -> Config:
    """``base`` with a trial's training settings (and, given them, its scoring settings)."""
    raw = base.model_dump()
    raw["loss"].update(w_con=float(params["w_con"]), w_enc=float(params["w_enc"]), w_adv=float(params["w_adv"]))
    raw["model"].update(latent_size=int(params["latent_size"]), image_size=int(params["image_size"]))
    if "train_window" in params:
        raw["loss"]["ssim_window"] = int(params["train_window"])
    if lam is not None:
        raw["scoring"]["lam"] = float(lam)
    if score_window is not None:
        raw["scoring"]["ssim_window"] = int(score_window)
    return Config.model_validate(raw)


# ---------------------------------------------------------------- scoring-side search


class ImageCache:
    """A loader for ``train.fit`` that reads each (image, channels, size) once per search."""

    def __init__(self) -> None:
        self._store: dict[tuple[Path, int, int], tuple[torch.Tensor, tuple[int, int]] | str] = {}

    def __call__(self, paths: list[Path], channels: int, size: int, progress: bool = False) -> data.LoadedImages:
        missing = [p for p in paths if (p, channels, size) not in self._store]
        fresh = data.load_images(missing, channels, size, progress)
        for p, img, hw in zip(fresh.paths, fresh.images, fresh.original_sizes):
            self._store[(p, channels, size)] = (img, hw)
        for p, why in fresh.skipped:
            self._store[(p, channels, size)] = why
        tensors, ok, sizes, skipped = [], [], [], []
        for p in paths:
            entry = self._store[(p, channels, size)]
            if isinstance(entry, str):
                skipped.append((p, entry))
            else:
                tensors.append(entry[0])
                ok.append(p)
                sizes.append(entry[1])
        images = torch.stack(tensors) if tensors else torch.empty(0, channels, size, size)
        return data.LoadedImages(images, ok, sizes, skipped)


@dataclass
class ScoringChoice:
    objective: float            # best validation AUROC over the scoring grid
    lam: float
    score_window: int | None    # None when the score is L1 (no window)
    base_auroc: float           # validation AUROC at the base config's own lambda and window


def search_scoring(model: TrainedModel, normals: torch.Tensor, anomalies: torch.Tensor, space: SearchSpace,
                   base: Config) -> ScoringChoice:
    """Try every (lambda, score window) on one model's cached outputs; the normals give the
    z-score statistics. Ties go to the setting nearest the base config's."""
    sc = base.scoring
    cached_n = score_images(model.generator, normals, sc, keep_reconstructions=True)
    cached_a = score_images(model.generator, anomalies, sc, keep_reconstructions=True)
    (rec_n, l_n), (rec_a, l_a) = (cached_n.reconstructions, cached_n.l), (cached_a.reconstructions, cached_a.l)
    labels = np.r_[np.zeros(len(normals)), np.ones(len(anomalies))]
    windows = space.score_windows if sc.score == "ssim" else (sc.ssim_window,)
    grid: list[tuple[float, int, float]] = []
    base_auroc = float("nan")
    for window in sorted({*windows, sc.ssim_window}):
        def r_of(x, rec):
            amap = anomaly_map(x, rec, sc.score, window, sc.map_sigma)
            return pool_map(amap, sc.pooling, sc.topk_fraction).numpy()

        r_n, r_a = r_of(normals, rec_n), r_of(anomalies, rec_a)
        cal = fit_calibration(r_n, l_n, 0.5, sc.false_alarm_rate)
        r_all, l_all = np.r_[r_n, r_a], np.r_[l_n, l_a]
        for lam in sorted({*space.lams, sc.lam}):
            auc = float(roc_auc_score(labels, combined_score(r_all, l_all, cal, lam)))
            if lam == sc.lam and window == sc.ssim_window:
                base_auroc = auc
            if lam in space.lams and window in windows:
                grid.append((lam, window, auc))
    nearest_first = sorted(grid, key=lambda g: (abs(g[0] - sc.lam), abs(g[1] - sc.ssim_window)))
    lam, window, best = max(nearest_first, key=lambda g: g[2])
    return ScoringChoice(best, lam, window if sc.score == "ssim" else None, base_auroc)


# ---------------------------------------------------------------- the search


@dataclass
class TrialResult:
    stage: int
    trial: int
    params: dict[str, int]
    state: str
    baseline: bool = False
    objective: float | None = None
    best_lam: float | None = None
    best_score_window: int | None = None
    val_auroc_base_scoring: float | None = None
    train_seconds: float | None = None
    seconds: float | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return f"s{self.stage}-{self.trial:03d}"


@dataclass
class TuneOutcome:
    trials: list[TrialResult]
    best: TrialResult
    baseline: TrialResult
    best_config: Config
    validation: str
    stage_best: dict[int, float] = field(default_factory=dict)
    standard_error: float = float("nan")  # of the best validation AUROC, for this validation set's size
    test: dict[str, dict] = field(default_factory=dict)


class Search:
    """One search folder: settings, the SQLite study, trial runs and results."""

    def __init__(self, data_root: str | Path, out: str | Path, base: Config, space: SearchSpace,
                 settings: TuneSettings, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        space.check()
        settings.check()
        self.data_root, self.out = Path(data_root), Path(out)
        self.base, self.space, self.settings = base, space, settings
        self.progress, self.log = progress, log
        self.cache = ImageCache()
        self.train_ssim = base.loss.contextual == "ssim"
        data.train_images(self.data_root)  # fail early, naming the folder, when DATA is wrong
        self._prepare_folder(resume)
        self.validation = validation_set(self.data_root, settings)
        self._write_validation_lists()

    # -- folder and settings

    def _settings_record(self) -> dict:
        return {"data": str(self.data_root.resolve()), "base_config": self.base.model_dump(mode="json"),
                "space": asdict(self.space), "settings": asdict(self.settings)}

    def _prepare_folder(self, resume: bool) -> None:
        record_path = self.out / "tune.json"
        record = json.loads(json.dumps(self._settings_record()))
        if record_path.is_file():
            if not resume:
                raise TuneError(f"{self.out}: already holds a search; pass --resume to continue it or choose another --out")
            stored = json.loads(record_path.read_text())
            changed = [k for k in record if stored.get(k) != record[k]]
            if changed:
                raise TuneError(f"{self.out}: cannot resume with different {', '.join(changed)}; "
                                "repeat the original command with --resume")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps(record, indent=1))

    def _write_validation_lists(self) -> None:
        rel = lambda p: str(p.resolve().relative_to(self.data_root.resolve()))  # noqa: E731
        atomic_write_text(self.out / "validation_anomalies.txt",
                          "# test images set aside for validation; aoiflow test --exclude this file\n"
                          + "".join(f"{rel(p)}\n" for p in sorted(self.validation.excluded_from_test)))

    def _storage(self) -> str:
        return f"sqlite:///{(self.out / 'study.db').resolve()}"

    def _study(self, stage: int):
        import optuna

        return optuna.create_study(study_name=f"stage{stage}", storage=self._storage(), direction="maximize",
                                   load_if_exists=True)

    # -- one trial

    def _run_trial(self, stage: int, number: int, params: dict[str, int], baseline: bool) -> TrialResult:
        result = TrialResult(stage, number, params, "running", baseline)
        run_dir = self.out / "trials" / result.name
        t0 = time.perf_counter()
        try:
            from aoiflow.train import fit

            config = trial_config(self.base, params)
            t_train = time.perf_counter()
            fit(self.data_root, run_dir, config, resume=(run_dir / "checkpoint.pt").exists(), progress=False,
                loader=self.cache)
            result.train_seconds = time.perf_counter() - t_train
            model = TrainedModel.load(run_dir)
            size, ch = config.model.image_size, model.channels
            normal_paths = [self.data_root / p for p in model.split["val"]] + self.validation.extra_normals
            normals = self.cache(normal_paths, ch, size).images
            anomalies = self.cache(self.validation.anomalies, ch, size).images
            choice = search_scoring(model, normals, anomalies, self.space, self.base)
            result.objective, result.best_lam = choice.objective, choice.lam
            result.best_score_window, result.val_auroc_base_scoring = choice.score_window, choice.base_auroc
            result.state = "complete"
        except (ValueError, RuntimeError) as exc:  # a diverged or impossible trial must not end the search
            result.state, result.error = "fail", f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - t0
        atomic_write_text(run_dir / "result.json", json.dumps(asdict(result), indent=1))
        return result

    def _tell(self, study, number: int, result: TrialResult) -> None:
        from optuna.trial import TrialState

        if result.state == "complete":
            study.tell(number, result.objective)
        else:
            study.tell(number, state=TrialState.FAIL)

    # -- stages

    def _results(self, stage: int) -> list[TrialResult]:
        from optuna.trial import TrialState

        out = []
        for t in self._study(stage).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            path = self.out / "trials" / f"s{stage}-{t.number:03d}" / "result.json"
            if path.is_file():
                out.append(TrialResult(**json.loads(path.read_text())))
        return out

    def _anchors(self, stage: int) -> list[dict[str, int]]:
        if stage == 1:
            return [base_params(self.base)]
        pool = [r for s in range(1, stage) for r in self._results(s) if r.state == "complete"]
        if not pool:
            raise TuneError(f"stage {stage}: every earlier trial failed; see {self.out / 'trials.csv'}")
        ranked = sorted(pool, key=lambda r: (-r.objective, r.stage, r.trial))
        unique: list[dict[str, int]] = []
        for r in ranked:
            if r.params not in unique:
                unique.append(r.params)
        return unique[: 1 if stage == 2 else self.settings.top_few]

    def run_stage(self, stage: int, bar) -> None:
        import optuna
        from optuna.trial import TrialState

        study = self._study(stage)
        budget = self.settings.stage_trials[stage - 1]
        if stage == 1 and not study.get_trials(deepcopy=False):
            study.enqueue_trial(base_params(self.base))  # the untuned config is trial 0: the yardstick
        anchors = self._anchors(stage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if set(t.params) == set(stage_distributions(stage, self.space, anchors[0], self.train_ssim)):
                self._finish(study, stage, t.number, {k: int(v) for k, v in t.params.items()}, bar)
            else:  # stopped while its settings were drawn: it never ran and costs no budget
                study.tell(t.number, state=TrialState.FAIL)
        while (done := len(self._results(stage))) < budget:
            number = len(study.get_trials(deepcopy=False))
            # A sampler seeded per trial makes the sequence the same whether or not the search was interrupted.
            study.sampler = optuna.samplers.RandomSampler(seed=self.settings.seed * 10_000 + stage * 1_000 + number)
            anchor = anchors[done % len(anchors)]
            trial = study.ask(stage_distributions(stage, self.space, anchor, self.train_ssim))
            self._finish(study, stage, trial.number, {k: int(v) for k, v in trial.params.items()}, bar)

    def _finish(self, study, stage: int, number: int, params: dict[str, int], bar) -> None:
        baseline = stage == 1 and number == 0
        result = self._run_trial(stage, number, params, baseline)
        self._tell(study, number, result)
        self.write_table()
        done = [r for s in (1, 2, 3) for r in self._results(s) if r.state == "complete"]
        best = max((r.objective for r in done), default=float("nan"))
        bar.update(1)
        bar.set_postfix(stage=stage, best=f"{best:.3f}")
        what = " ".join(f"{k}={v}" for k, v in params.items())
        verdict = (f"val AUROC {result.objective:.3f} (lambda {result.best_lam}, window {result.best_score_window})"
                   if result.state == "complete" else f"failed: {result.error}")
        self.log(f"stage {stage} trial {number}{' (untuned)' if baseline else ''}: {what} -> {verdict}, "
                 f"{result.seconds:.0f}s; best so far {best:.3f}")

    # -- outputs

    def all_results(self) -> list[TrialResult]:
        return [r for s in (1, 2, 3) for r in self._results(s)]

    def write_table(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=TRIAL_FIELDS)
        w.writeheader()
        for r in self.all_results():
            row = {k: v for k, v in asdict(r).items() if k in TRIAL_FIELDS}
            row.update(r.params, name=r.name)
            w.writerow(row)
        atomic_write_text(self.out / "trials.csv", buf.getvalue())

    def run(self) -> TuneOutcome:
        from tqdm import tqdm

        from aoiflow import report

        total = sum(self.settings.stage_trials)
        done = len(self.all_results())
        with tqdm(total=total, initial=done, desc="tune", unit="trial", disable=not self.progress) as bar:
            for stage in (1, 2, 3):
                self.run_stage(stage, bar)
        results = self.all_results()
        report.objective_plot(results, self.out / "objective.png")
        return self._conclude(results)

    def _conclude(self, results: list[TrialResult]) -> TuneOutcome:
        complete = [r for r in results if r.state == "complete"]
        best = max(complete, key=lambda r: (r.objective, -r.stage, -r.trial))
        baseline = next(r for r in results if r.baseline)
        config = trial_config(self.base, best.params, best.best_lam, best.best_score_window)
        save_config(config, self.out / "best.yaml", header=(
            f"aoiflow tune on {self.data_root}: trial {best.name}, validation AUROC {best.objective:.3f}\n"
            f"each trial trained {config.train.epochs} epochs; raise train.epochs (or pass --epochs) for production"))
        stage_best = {s: max((r.objective for r in complete if r.stage == s), default=float("nan")) for s in (1, 2, 3)}
        n_normal = len(TrainedModel.load(self.out / "trials" / best.name).split["val"]) + len(self.validation.extra_normals)
        se = auroc_standard_error(best.objective, len(self.validation.anomalies), n_normal)
        return TuneOutcome(results, best, baseline, config, self.validation.description, stage_best, se)

    def final_test(self, outcome: TuneOutcome) -> TuneOutcome:
        """Train nothing new: give the best trial's networks the tuned scoring (``best_run``) and
        test it, the untuned trial, and the untuned networks with their own best scoring
        (which splits the gain into scoring and training settings), on the same held-back images."""
        from aoiflow.evaluate import evaluate_run

        runs = {"tuned": self._rescored(outcome.best, "best_run")}
        u = outcome.baseline
        if u.state == "complete":
            runs["untuned"] = self.out / "trials" / u.name
            runs["untuned_networks_tuned_scoring"] = self._rescored(u, "untuned_rescored")
        for label, run in runs.items():
            metrics, _ = evaluate_run(run, self.data_root, self.out / f"test_{label}", progress=False,
                                      exclude=self.validation.excluded_from_test)
            outcome.test[label] = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "f1_at_threshold")}
            outcome.test[label]["counts"] = metrics["counts"]
        write_summary(self.out, outcome)
        return outcome

    def _rescored(self, trial: TrialResult, name: str) -> Path:
        """A run folder with ``trial``'s networks and its best scoring (calibrated again, seconds)."""
        from aoiflow.train import fit_like

        run = self.out / name
        if run.exists():
            shutil.rmtree(run)  # rebuilt from the trial, so a rerun never mixes results
        config = trial_config(self.base, trial.params, trial.best_lam, trial.best_score_window)
        fit_like(self.out / "trials" / trial.name, self.data_root, run, config, progress=False, loader=self.cache)
        return run


def write_summary(out: Path, outcome: TuneOutcome) -> None:
    """summary.json and summary.md: stage bests, the chosen settings, tuned vs untuned on the test."""
    def fmt(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    b, u = outcome.best, outcome.baseline
    summary = {"validation": outcome.validation, "stage_best_objective": outcome.stage_best,
               "best_objective_standard_error": outcome.standard_error,
               "best_trial": asdict(b), "untuned_trial": asdict(u), "test": outcome.test}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    rows = "\n".join(f"| stage {s} | {fmt(v)} |" for s, v in outcome.stage_best.items())
    t, n = outcome.test.get("tuned", {}), outcome.test.get("untuned", {})
    r = outcome.test.get("untuned_networks_tuned_scoring", {})
    md = f"""# aoiflow tune

Validation: {outcome.validation}.
Objective: image AUROC on that validation set, at the best lambda / score window for each trained model.

| stage | best validation AUROC |
|---|---|
{rows}

Best trial {b.name}: {b.params}, lambda {b.best_lam}, score window {b.best_score_window}
(validation AUROC {fmt(b.objective)}, standard error {fmt(outcome.standard_error)}: trials closer than about
twice that cannot be told apart on this validation set; being the maximum over all trials and scoring
settings, it is optimistic, and the test rows below are the unbiased figures). Untuned trial {u.name}: validation AUROC {fmt(u.val_auroc_base_scoring)}
at its own scoring, {fmt(u.objective)} with the scoring searched.

| on the held-back test images | image AUROC | pixel AUROC | F1 at threshold |
|---|---|---|---|
| tuned (best.yaml) | {fmt(t.get('image_auroc'))} | {fmt(t.get('pixel_auroc'))} | {fmt(t.get('f1_at_threshold'))} |
| untuned | {fmt(n.get('image_auroc'))} | {fmt(n.get('pixel_auroc'))} | {fmt(n.get('f1_at_threshold'))} |
| untuned networks, their best lambda / window | {fmt(r.get('image_auroc'))} | {fmt(r.get('pixel_auroc'))} | {fmt(r.get('f1_at_threshold'))} |

Files: trials.csv (every trial), objective.png, best.yaml (`aoiflow train DATA --config best.yaml`),
best_run/ (the best trial's networks with the tuned scoring), untuned_rescored/, and a test report for each
row (test_<row>/report.html).
"""
    atomic_write_text(out / "summary.md", md)


def tune(data_root: str | Path, out: str | Path, base: Config, space: SearchSpace = SearchSpace(),
         settings: TuneSettings = TuneSettings(), resume: bool = False, progress: bool = True,
         log: Callable[[str], None] | None = None) -> TuneOutcome:
    """Run (or resume) the three-stage search in ``out`` and test its result; see the module doc."""
    import optuna
    from tqdm import tqdm

    log = log or tqdm.write  # prints above the progress bar instead of through it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(Path(out)):
        search = Search(data_root, out, base, space, settings, resume, progress, log)
        log(f"validation: {search.validation.description}")
        return search.final_test(search.run())


class _exclusive:
    """Refuse a second search in the same folder at the same time (SQLite would survive it; the
    trial folders would not)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise TuneError(f"{self.path.parent}: another aoiflow tune is running in this folder") from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


