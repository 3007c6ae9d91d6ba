"""Command line: ``aoiflow train | test | tune | predict | prelabel | preprocess | synth | export | demo``.

Parses flags, calls the library, prints; known errors become one red line and exit code 2.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from aoiflow.config import DEFAULT_PRESET, PRESET_NAMES, REFERENCE_PRESETS, Config, ConfigError, TrainConfig, build_config
from aoiflow.service.settings import ServiceSettings  # pydantic only: no FastAPI or torch for --help


class _PlainHelp:
    """Help without Typer 0.29's placeholders. Its rich help takes an option's type column from
    ``display_type_rich()``, which prints the annotation (``<bool>``) unless a metavar is set and
    never asks whether the option is a flag: every switch, --help too, read ``--quiet <bool>``.
    An empty metavar prints nothing. Arguments get click's upper-case names (DATA), which the
    help texts use."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # includes the lazily made --help option
        for p in params:
            if p.metavar is None and getattr(p, "is_flag", False):
                p.metavar = ""
            elif p.metavar is None and p.param_type_name == "argument":
                p.metavar = p.name.upper()
        return params


class _Command(_PlainHelp, TyperCommand):
    def collect_usage_pieces(self, ctx):
        # Typer writes a required argument as {data}; click's usage reads DATA, [OPTIONAL]
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


class _Group(_PlainHelp, TyperGroup):
    pass


class _App(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)  # every command, present and future, gets the plain help
        return super().command(*args, **kwargs)


app = _App(cls=_Group, add_completion=False, no_args_is_help=True,
           help="aoiflow: learn normal parts from normal images, flag and locate anything else.")


def _known_errors() -> tuple[type[Exception], ...]:
    from aoiflow.data import DataLayoutError, ImageReadError
    from aoiflow.export import ExportError
    from aoiflow.runs import RunError

    return (ConfigError, DataLayoutError, ImageReadError, RunError, ExportError)


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _short_warnings() -> None:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


_PRESETS = {name: build_config(name) for name in PRESET_NAMES}
DEFAULT_THREADS = TrainConfig.model_fields["threads"].default
DEFAULT_MAX_PIXELS = 64_000_000  # aoiflow.data.DEFAULT_MAX_PIXELS, not imported: it would load torch for --help


def _preset_default(field: str) -> str:
    """'default 128; ganomaly-l1-l1: 64': the default preset's value, then the presets that differ."""
    section, key = field.split(".")
    value = {name: getattr(getattr(cfg, section), key) for name, cfg in _PRESETS.items()}
    others = [f"{name}: {v}" for name, v in value.items() if v != value[DEFAULT_PRESET]]
    return "; ".join([f"default {value[DEFAULT_PRESET]}", *others])


PresetOpt = typer.Option(None, "--preset", help=f"one of: {', '.join(REFERENCE_PRESETS)} (the reference system's), "
                                                f"ganomaly-ssim-head (beyond it: a head trained on synthetic defects) "
                                                f"(default {DEFAULT_PRESET})")
ConfigOpt = typer.Option(None, "--config", exists=False,
                         help="YAML settings, partial is fine (its values replace the preset's; flags replace both)")
QuietOpt = typer.Option(False, "--quiet", help="no progress bars")
RawOpt = typer.Option(False, "--raw", help="inputs are raw frames: apply the run's preprocessing first")


def _at_least(low: int):
    """A flag check; Typer's own min= would print the type as '<int range> [x>=1]'."""
    def check(value: int | None) -> int | None:
        if value is not None and value < low:
            raise typer.BadParameter(f"must be at least {low}, got {value}")
        return value
    return check


ThreadsOpt = typer.Option(None, "--threads", callback=_at_least(1),
                          help=f"CPU threads for torch (default {DEFAULT_THREADS}); jobs that together use more "
                               "threads than there are cores slow each other 3-10x")
MaxPixelsOpt = typer.Option(None, "--max-pixels", callback=_at_least(4),
                            help=f"refuse images with more pixels than this; default {DEFAULT_MAX_PIXELS}")


def _config(preset: str | None, config: Path | None, flags: dict[str, tuple[str, Any]]) -> Config:
    """build_config from flag values, ``{"--epochs": ("train.epochs", 5)}``, so a bad value names its flag."""
    overrides: dict[str, dict[str, Any]] = {}
    for field, value in flags.values():
        section, key = field.split(".")
        overrides.setdefault(section, {})[key] = value
    return build_config(preset, config, overrides, flags={field: flag for flag, (field, _) in flags.items()})


def _limit_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None:
        from aoiflow.data import set_max_pixels

        set_max_pixels(max_pixels)


@app.command()
def train(
    data: Path = typer.Argument(..., help="dataset root in MVTec layout (uses DATA/train/good)"),
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    epochs: Optional[int] = typer.Option(None, help=f"training epochs ({_preset_default('train.epochs')})"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="cap on the whole training (images, epochs, head, calibration): "
                                                     "fewer epochs and head steps when they would not fit (0 = none)"),
    batch_size: Optional[int] = typer.Option(None, help=f"images per step ({_preset_default('train.batch_size')})"),
    image_size: Optional[int] = typer.Option(None, help="model input size, a power of two from 32 to 256 "
                                                        f"({_preset_default('model.image_size')})"),
    base_width: Optional[int] = typer.Option(None, help="channels of the first conv layer "
                                                        f"({_preset_default('model.base_width')})"),
    canvas: Optional[int] = typer.Option(None, help="native-resolution patches: read images at CANVAS px, train on "
                                                    "random image-size windows, score by sliding window (0 = off)"),
    patch_stride: Optional[int] = typer.Option(None, "--patch-stride",
                                               help="step between scoring windows with --canvas (0 = 3/4 of a window)"),
    lr: Optional[float] = typer.Option(None, help=f"learning rate ({_preset_default('train.lr')})"),
    head_steps: Optional[int] = typer.Option(None, "--head-steps", callback=_at_least(1),
                                             help="optimiser steps of the synthetic-defect head, with "
                                                  "--max-minutes at most (ganomaly-ssim-head; default 1500)"),
    head_share: Optional[float] = typer.Option(None, "--head-share",
                                               help="the head's share of --max-minutes, GANomaly's epochs taking "
                                                    f"the rest ({_preset_default('head.budget_share')})"),
    precision: Optional[str] = typer.Option(None, help="fp32, or bf16: the networks' convolutions in bfloat16 "
                                                       "(faster on CPUs with AVX-512 BF16 or AMX; "
                                                       f"{_preset_default('train.precision')})"),
    head_flips: Optional[bool] = typer.Option(None, "--head-flips/--no-head-flips",
                                              help="flip the head's training samples with their reconstructions "
                                                   f"and labels ({_preset_default('head.flips')})"),
    seed: Optional[int] = typer.Option(None, help=f"random seed ({_preset_default('train.seed')})"),
    false_alarm_rate: Optional[float] = typer.Option(None, "--false-alarm-rate",
                                                     help="share of normal parts the line may flag; sets the "
                                                          f"threshold ({_preset_default('scoring.false_alarm_rate')})"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    quiet: bool = QuietOpt,
) -> None:
    """Train GANomaly on normal images; writes RUN/checkpoint.pt, config.yaml, history.csv.
    Under torchrun, every process trains its share of each batch (DistributedDataParallel)."""
    from aoiflow import distributed
    from aoiflow.train import TrainingInterrupted, fit

    _short_warnings()
    if distributed.launched() and threads is None:
        threads = distributed.threads_per_process()  # N processes on N cores: one thread each
    flags = {"--epochs": ("train.epochs", epochs), "--batch-size": ("train.batch_size", batch_size),
             "--seed": ("train.seed", seed), "--threads": ("train.threads", threads), "--lr": ("train.lr", lr),
             "--false-alarm-rate": ("scoring.false_alarm_rate", false_alarm_rate),
             "--image-size": ("model.image_size", image_size), "--base-width": ("model.base_width", base_width),
             "--canvas": ("model.canvas", canvas), "--patch-stride": ("scoring.patch_stride", patch_stride),
             "--max-minutes": ("train.max_minutes", max_minutes), "--head-steps": ("head.steps", head_steps),
             "--head-share": ("head.budget_share", head_share), "--precision": ("train.precision", precision),
             "--head-flips": ("head.flips", head_flips)}
    try:
        if preset is None and config is None and not resume:
            preset = DEFAULT_PRESET
        if resume and preset is None and config is None and (out / "config.yaml").is_file():
            config = out / "config.yaml"
        cfg = _config(preset, config, flags)
        _limit_pixels(max_pixels)
        with distributed.processes() as main:  # joins torchrun's process group; one process otherwise
            ckpt = fit(data, out, cfg, resume=resume, progress=not quiet and main)
    except TrainingInterrupted as exc:  # a RunError too: caught first, for its own colour and exit code
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except _known_errors() as exc:
        _fail(exc)
    if main:
        typer.echo(f"trained {cfg.preset or 'custom config'} -> {ckpt}")


@app.command()
def test(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    data: Path = typer.Argument(..., help="dataset root with DATA/test/<good|defect>/"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default RUN/eval)"),
    threshold: Optional[float] = typer.Option(None, help="override the stored decision threshold on A"),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="file listing test images to leave out "
                                           "(one per line, relative to DATA), e.g. TUNE/validation_anomalies.txt"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Score DATA/test: metrics.json, scores.csv, roc.png, score_hist.png, panel.png, report.html."""
    from aoiflow.evaluate import evaluate, read_exclude_list

    _short_warnings()
    try:
        _limit_pixels(max_pixels)
        left_out = read_exclude_list(exclude, data) if exclude else None
        metrics = evaluate(run, data, out, threshold, progress=not quiet, exclude=left_out,
                           threads=threads or DEFAULT_THREADS)
    except _known_errors() as exc:
        _fail(exc)
    where = out or run / "eval"
    keys = ("image_auroc", "pixel_auroc", "f1_at_threshold", "ms_per_image")
    typer.echo(json.dumps({k: metrics[k] for k in keys}, indent=1))
    for p, why in ((s["path"], s["reason"]) for s in metrics["skipped"]):
        typer.echo(f"skipped {p}: {why}")
    typer.echo(f"report: {where / 'report.html'}")


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated whole numbers") from None


@app.command()
def tune(
    data: Path = typer.Argument(..., help="dataset root in MVTec layout"),
    out: Path = typer.Option(..., "--out", help="search folder (study.db, trials/, trials.csv, best.yaml, summary.md)"),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    trials: int = typer.Option(20, help="trials in all, shared 50/30/20 % over the three stages"),
    stage_trials: Optional[str] = typer.Option(None, help="trials per stage, e.g. 10,6,4 (overrides --trials)"),
    top: int = typer.Option(3, help="how many of the best trials stage 3 refines"),
    epochs: Optional[int] = typer.Option(None, help=f"training epochs per trial ({_preset_default('train.epochs')}; "
                                                     "a search on a CPU wants far fewer, e.g. 8)"),
    batch_size: Optional[int] = typer.Option(None, help=f"images per step ({_preset_default('train.batch_size')})"),
    base_width: Optional[int] = typer.Option(None, help="channels of the first conv layer "
                                                        f"({_preset_default('model.base_width')})"),
    lr: Optional[float] = typer.Option(None, help=f"learning rate ({_preset_default('train.lr')})"),
    image_sizes: Optional[str] = typer.Option(None, help="image sizes to search (default 64,128,256)"),
    latent_sizes: Optional[str] = typer.Option(None, help="latent sizes to search (default 64,100,128,256,512,1024)"),
    val: Optional[Path] = typer.Option(None, "--val", help="labelled validation images: VAL/<defect>/ (and VAL/good)"),
    val_fraction: float = typer.Option(0.2, help="without --val: this fraction of each defect type in DATA/test "
                                                 "validates and is left out of the final test"),
    seed: int = typer.Option(0, help="seed of the sampler and of the validation split"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the search in --out"),
    storage: Optional[str] = typer.Option(None, "--storage", help="share the search with other workers through "
                                          "this database, e.g. postgresql://user:pass@host/db (each worker on "
                                          "its own --out)"),
    study: Optional[str] = typer.Option(None, "--study", help="with --storage: the search's name there "
                                        "(default: the --out folder's name)"),
    heartbeat: int = typer.Option(60, "--heartbeat", callback=_at_least(1),
                                  help="with --storage: seconds between a worker's signs of life; a trial "
                                       "silent for three is run again by another worker"),
    quiet: bool = QuietOpt,
) -> None:
    """Three-stage random search over loss weights, latent and image size, SSIM windows and lambda."""
    from aoiflow.tune import Cooperation, SearchSpace, TuneError, TuneSettings, WorkerStopped, split_trials, \
        storage_url, tune as run_tune

    _short_warnings()
    flags = {"--epochs": ("train.epochs", epochs), "--batch-size": ("train.batch_size", batch_size),
             "--lr": ("train.lr", lr), "--threads": ("train.threads", threads),
             "--base-width": ("model.base_width", base_width)}
    try:
        if preset is None and config is None:
            preset = DEFAULT_PRESET
        base = _config(preset, config, flags)
        _limit_pixels(max_pixels)
        narrowed = {"image_sizes": _int_list(image_sizes, "--image-sizes"),
                    "latent_sizes": _int_list(latent_sizes, "--latent-sizes")}
        space = SearchSpace(**{k: v for k, v in narrowed.items() if v})
        per_stage = _int_list(stage_trials, "--stage-trials") or split_trials(trials)
        settings = TuneSettings(stage_trials=per_stage, top_few=top, val_fraction=val_fraction,
                                val_dir=str(val) if val else None, seed=seed)
        if study is not None and storage is None:
            raise ConfigError("--study names a search in a shared database: pass --storage URL too")
        shared = Cooperation(storage_url(storage), study or out.resolve().name, heartbeat) if storage else None
        outcome = run_tune(data, out, base, space, settings, resume=resume, progress=not quiet, shared=shared)
    except WorkerStopped as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except (*_known_errors(), TuneError) as exc:
        _fail(exc)
    for stage, best in outcome.stage_best.items():
        typer.echo(f"stage {stage}: best validation AUROC {best:.3f}")
    typer.echo(f"best trial {outcome.best.name}: validation AUROC {outcome.best.objective:.3f} "
               f"(standard error {outcome.standard_error:.3f}); untuned {outcome.baseline.val_auroc_base_scoring:.3f}")
    for label, m in outcome.test.items():
        typer.echo(f"{label}: test image AUROC {m['image_auroc']:.3f} on {m['counts']['normal']} normal + "
                   f"{m['counts']['anomalous']} anomalous held-back images")
    typer.echo(f"best config: {out / 'best.yaml'}   summary: {out / 'summary.md'}")


@app.command()
def calibrate(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    normals: Optional[Path] = typer.Argument(None, help="normal images (a file or folder) the run never trained on "
                                                        "(default: the run's own held-out normals)"),
    false_alarm_rate: Optional[float] = typer.Option(None, "--false-alarm-rate",
                                                     help="share of normal parts the line may flag, e.g. 0.01 "
                                                          "(default: the run's); 1/rate - 1 normals are needed"),
    raw: bool = RawOpt,
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Set the decision threshold again from normal images (new lighting, camera or target), no retraining."""
    import torch

    from aoiflow.calibrate import CalibrationError
    from aoiflow.predict import collect_inputs
    from aoiflow.recalibrate import recalibrate_run

    _short_warnings()
    try:
        if false_alarm_rate is not None and not 0 < false_alarm_rate < 1:
            raise ConfigError(f"--false-alarm-rate {false_alarm_rate}: must be between 0 and 1")
        _limit_pixels(max_pixels)
        torch.set_num_threads(threads or DEFAULT_THREADS)
        paths = collect_inputs(normals) if normals is not None else None
        cal, skipped = recalibrate_run(run, paths, false_alarm_rate, raw=raw, progress=not quiet)
    except (*_known_errors(), CalibrationError) as exc:
        _fail(exc)
    for path, why in skipped:
        typer.echo(f"skipped {path}: {why}", err=True)
    typer.echo(f"calibrated {run}: {cal.summary()}")


@app.command("train-head")
def train_head_command(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    steps: Optional[int] = typer.Option(None, callback=_at_least(1), help="optimiser steps (default 1500)"),
    width: Optional[int] = typer.Option(None, help="U-Net width of the first stage (default 16)"),
    full_size: bool = typer.Option(False, "--full-size", help="run the head at the model size, not half "
                                                               "(finer maps, about 3x slower)"),
    max_defect_area: Optional[float] = typer.Option(None, help="largest painted defect blob, share of the "
                                                                "image (default 0.5)"),
    flips: Optional[bool] = typer.Option(None, "--flips/--no-flips", help="flip training samples with their "
                                                                          "reconstructions and labels"),
    lam: Optional[float] = typer.Option(None, help="weight of the head's map in A against L (default 1.0)"),
    augment: Optional[str] = typer.Option(None, help="comma-separated transforms that keep a normal part "
                                                      "normal, for the head's batches: hflip,vflip,rot90,shift "
                                                      "(default: the run's train.augment)"),
    precision: Optional[str] = typer.Option(None, help="fp32, or bf16: the head's convolutions in bfloat16 "
                                                       "(default: the run's train.precision)"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="train only the steps that fit in this many minutes "
                                                     "(the calibration after them not counted)"),
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Give a trained run the synthetic-defect head (beyond the reference system), then calibrate it again."""
    import torch

    from aoiflow.headrun import add_head

    _short_warnings()
    settings = {k: v for k, v in {"steps": steps, "width": width, "max_defect_area": max_defect_area,
                                  "flips": flips}.items() if v is not None}
    if full_size:
        settings["downsample"] = 1
    try:
        if lam is not None and not 0 <= lam <= 1:
            raise ConfigError(f"--lam {lam}: must be between 0 and 1")
        torch.set_num_threads(threads or DEFAULT_THREADS)
        kinds = None if augment is None else [k.strip() for k in augment.split(",") if k.strip()]
        model = add_head(run, settings, lam, progress=not quiet, augment=kinds, precision=precision,
                         max_minutes=max_minutes)
    except _known_errors() as exc:
        _fail(exc)
    typer.echo(f"head trained for {run}: {model.calibration.summary()}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`, or an exported .onnx/.xml model"),
    target: Path = typer.Argument(..., help="an image file or a folder of images"),
    out: Path = typer.Option(..., "--out", help="folder for predictions.csv and maps/"),
    threshold: Optional[float] = typer.Option(None, help="override the stored decision threshold on A"),
    no_maps: bool = typer.Option(False, "--no-maps", help="skip writing anomaly-map PNGs"),
    raw: bool = RawOpt,
    precision: str = typer.Option("f32", help="OpenVINO models: f32 (exact) or bf16 (faster where the CPU has it)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the results of an earlier run in --out"),
    supervised: Optional[Path] = typer.Option(None, "--supervised", help="a defect-kind model (folder from `aoiflow "
                                              "supervise train`, or its .onnx/.xml export): verdicts ok, defect:<kind> "
                                              "or unknown_anomaly"),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data over a Ray "
                                                         "cluster's workers; scores with the exported .onnx "
                                                         "and adds OUT/predictions.parquet/)"),
    workers: Optional[int] = typer.Option(None, "--workers", callback=_at_least(1),
                                          help="--engine ray: model copies (default: the cluster's CPUs / --threads)"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Judge new images: OUT/predictions.csv (path, R, L, A, decision, verdict) and OUT/maps/*.png."""
    from aoiflow.predict import Inspector, predict_to_folder

    _short_warnings()
    try:
        if precision not in ("f32", "bf16"):
            raise ConfigError(f"--precision {precision!r}: choose f32 or bf16")
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine {engine!r}: choose local or ray")
        if workers is not None and engine != "ray":
            raise ConfigError("--workers sets the model copies of --engine ray; pass --engine ray too")
        _limit_pixels(max_pixels)
        if engine == "ray":
            return _predict_on_ray(run, target, out, threshold, threads, workers, no_maps, raw, overwrite,
                                   supervised, quiet)
        inspector = Inspector.load(run, threshold, threads=threads or DEFAULT_THREADS, precision=precision,
                                   supervised=supervised)
        results = predict_to_folder(inspector, target, out, write_maps=not no_maps, progress=not quiet, raw=raw,
                                    overwrite=overwrite)
    except _known_errors() as exc:
        _fail(exc)
    bad = [r for r in results if r.status != "ok"]
    flagged = sum(r.decision == "anomalous" for r in results)
    kinds = ""
    if supervised is not None:
        counts = Counter(r.verdict for r in results if r.status == "ok" and r.verdict != "ok")
        kinds = " (" + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + ")" if counts else ""
    typer.echo(f"{len(results) - len(bad)} scored, {flagged} anomalous{kinds}, {len(bad)} not scored "
               f"-> {out / 'predictions.csv'}")
    for r in bad:
        typer.echo(f"skipped {r.path}: {r.reason}", err=True)


def _predict_on_ray(run: Path, target: Path, out: Path, threshold: float | None, threads: int | None,
                    workers: int | None, no_maps: bool, raw: bool, overwrite: bool, supervised: Path | None,
                    quiet: bool) -> None:
    """``aoiflow predict --engine ray`` (aoiflow.batch); its errors reach predict's handler."""
    if supervised is not None:
        raise ConfigError("--supervised: not available with --engine ray yet; use --engine local")
    try:
        import ray.data  # noqa: F401  (aoiflow.batch imports it lazily)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data: pip install 'aoiflow[scale]' ({exc})") from None
    from aoiflow.batch import predict_with_ray

    summary = predict_with_ray(run, target, out, threshold, threads=threads or 1, workers=workers,
                               write_maps=not no_maps, raw=raw, overwrite=overwrite, progress=not quiet)
    typer.echo(f"{summary.scored} scored, {summary.anomalous} anomalous, {len(summary.not_scored)} not scored "
               f"-> {out / 'predictions.csv'}, {out / 'predictions.parquet'}")
    for path, why in summary.not_scored:
        typer.echo(f"skipped {path}: {why}", err=True)


@app.command()
def prelabel(
    run: Path = typer.Argument(..., help="run folder, or an exported .onnx model"),
    images: Path = typer.Argument(..., help="an image file or a folder of images"),
    out: Path = typer.Option(..., "--out", help="folder for label files and review sheets"),
    fmt: list[str] = typer.Option(["labelme"], "--format", help="labelme, voc, coco, yolo or mask (repeatable)"),
    pixel_threshold: Optional[float] = typer.Option(None, help="map value above which a pixel is defect (default: the run's)"),
    threshold: Optional[float] = typer.Option(None, help="image threshold on A (default: the run's)"),
    min_area: float = typer.Option(4.0, help="smallest region, in model-input pixels"),
    opening: int = typer.Option(0, help="morphological opening radius in image pixels (0 = off)"),
    closing: int = typer.Option(0, help="morphological closing radius in image pixels (0 = off)"),
    label: str = typer.Option("defect", help="class name given to every region"),
    label_from_folder: bool = typer.Option(False, "--label-from-folder", help="class = the image's folder name"),
    raw: bool = RawOpt,
    yolo_segments: bool = typer.Option(False, "--yolo-segments", help="YOLO files with polygons instead of boxes"),
    no_review: bool = typer.Option(False, "--no-review", help="skip the review sheet PNGs"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the results of an earlier run in --out"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Turn anomaly maps into label files (LabelMe/VOC/COCO/YOLO/masks) and review sheets."""
    from aoiflow.predict import Inspector
    from aoiflow.prelabel import default_region_settings, prelabel_folder

    _short_warnings()
    try:
        _limit_pixels(max_pixels)
        inspector = Inspector.load(run, threshold, threads=threads or DEFAULT_THREADS)
        settings = default_region_settings(inspector, pixel_threshold, min_area=min_area, opening=opening,
                                           closing=closing, label=label)
        summary = prelabel_folder(inspector, images, out, fmt, settings, review=not no_review, progress=not quiet,
                                  raw=raw, label_from_folder=label_from_folder, yolo_segments=yolo_segments,
                                  overwrite=overwrite)
    except (*_known_errors(), ValueError) as exc:
        _fail(exc)
    typer.echo(f"{summary['images']} images, {summary['anomalous']} judged anomalous, {summary['regions']} regions "
               f"-> {out} ({', '.join(fmt)})")
    for path, why in summary["errors"]:
        typer.echo(f"skipped {path}: {why}", err=True)


@app.command()
def preprocess(
    raw: Path = typer.Argument(..., help="folder of raw frames (an MVTec tree keeps its layout; masks follow)"),
    out: Path = typer.Argument(..., help="output folder for surface maps and outlines.csv"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML settings; its preprocess section is used "
                                                                 "(flags replace its values)"),
    size: Optional[int] = typer.Option(None, help="output surface-map size in pixels"),
    margin: Optional[float] = typer.Option(None, help="margin around the part, fraction of its side"),
    threshold: Optional[str] = typer.Option(None, help="'otsu' or a fixed grey level 0-255"),
    orient: Optional[str] = typer.Option(None, help="'dark_corner' (turn the dark mark top-left) or 'none'"),
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Raw frames -> canonical, gamma-normalised surface maps; OUT/outlines.csv lists every frame."""
    from aoiflow.preprocess import preprocess_folder

    _short_warnings()
    thr = int(threshold) if threshold and threshold.isdigit() else threshold
    flags = {"--size": ("preprocess.size", size), "--margin": ("preprocess.margin", margin),
             "--threshold": ("preprocess.threshold", thr), "--orient": ("preprocess.orient", orient)}
    try:
        cfg = _config(None, config, flags).preprocess
        _limit_pixels(max_pixels)
        counts = preprocess_folder(raw, out, cfg, progress=not quiet)
    except _known_errors() as exc:
        _fail(exc)
    typer.echo(f"{counts['ok']} frames preprocessed, {counts['skipped']} skipped, {counts['error']} unreadable "
               f"-> {out} (see {out / 'outlines.csv'})")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="output folder (MVTec layout)"),
    scale: float = typer.Option(1.0, help="fraction of the reference split (500 train / 600 test frames)"),
    severity: float = typer.Option(1.0, help="defect strength (1 = default)"),
    seed: int = typer.Option(0, help="random seed"),
    variability: str = typer.Option(
        "0", metavar="<level>", help="how much normal parts differ from one another: none (0: all parts of a type "
        "alike, as in earlier versions), mild (0.4), strong (1) or a number 0-1. Scales the number, ends, bow and "
        "gauge of bond wires, print marks, ragged pads and solder, die offset and size, surface grain, lighting drift"),
    quiet: bool = QuietOpt,
) -> None:
    """Generate 1280x1024 LED frames with plate-rift, unclean and glue-overflow defects and masks."""
    from aoiflow.ledsynth import make_led_dataset, parse_variability

    if scale <= 0 or severity <= 0:
        _fail(ValueError("--scale and --severity must be positive"))
    try:
        v = parse_variability(variability)
    except ValueError as exc:
        _fail(exc)
    make_led_dataset(out, scale=scale, seed=seed, severity=severity, progress=not quiet, variability=v)
    typer.echo(f"frames -> {out}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .onnx file (default RUN/model[-int8].onnx)"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime) or openvino (IR .xml/.bin)"),
    int8: bool = typer.Option(False, "--int8", help="int8 convolutions, calibrated on training normals"),
    data: Optional[Path] = typer.Option(None, "--data", help="training data root for int8 calibration (default: the run's)"),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Export the scoring graph (image -> R, L, A, anomaly map) with its calibration in the file."""
    import torch

    from aoiflow.export import export_onnx, export_openvino

    if fmt not in ("onnx", "openvino"):
        _fail(ValueError(f"--format {fmt!r}: choose onnx or openvino"))
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    target = out or run / (("model-int8" if int8 else "model") + suffix)
    torch.set_num_threads(threads or DEFAULT_THREADS)  # tracing and int8 calibration run the model in torch
    try:
        write = export_onnx if fmt == "onnx" else export_openvino
        path = write(run, target, int8=int8, data_root=data)
    except _known_errors() as exc:
        _fail(exc)
    typer.echo(f"exported -> {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="folder for frames, surfaces, runs and the report"),
    scale: float = typer.Option(0.2, help="fraction of the reference LED split to generate"),
    epochs: int = typer.Option(80, help="training epochs per preset"),
    variability: str = typer.Option("0", metavar="<level>", help="how much normal parts differ: none (0, default), "
                                                                 "mild (0.4), strong (1) or 0-1 (see `synth`)"),
    varying: bool = typer.Option(True, "--varying/--no-varying",
                                 help="also run a line whose normal parts vary strongly (SSIM-SSIM and the "
                                      "synthetic-defect head; about 11 more minutes), summarised in the report"),
    quiet: bool = QuietOpt,
) -> None:
    """The whole line on generated LED frames: generate, preprocess, train 3 presets, evaluate, report."""
    from aoiflow.demo import run_led_demo
    from aoiflow.ledsynth import parse_variability

    _short_warnings()
    try:
        level = parse_variability(variability)
        report = run_led_demo(out, scale=scale, epochs=epochs, progress=not quiet, log=typer.echo,
                              variability=level, varying_line=varying and level < 1.0)
    except (*_known_errors(), ValueError) as exc:
        _fail(exc)
    typer.echo(f"report: {report}")


# --- supervise: the defect-kind model trained on reviewed labels (aoiflow.supervised) ------------

supervise_app = _App(cls=_Group, no_args_is_help=True,
                     help="The supervised defect-kind model, trained on reviewed labels: train | test | export.")
app.add_typer(supervise_app, name="supervise")

LabelFormatOpt = typer.Option(None, "--format", help="coco, labelme, voc, yolo, mask or mvtec (default: detected "
                                                     "from what is on disk)")
ImagesOpt = typer.Option(None, "--images", help="the image folder (needed for YOLO and mask labels; MVTec "
                                               "folders hold their own images)")
TrainGoodOpt = typer.Option(False, "--include-train-good", help="MVTec folders: train/good images as more "
                                                                "images without defects")


def _supervised_errors() -> tuple[type[Exception], ...]:
    from aoiflow.supervised.labels import LabelError

    return (*_known_errors(), LabelError)


@supervise_app.command("train")
def supervise_train(
    labels: Path = typer.Argument(..., help="reviewed label set: a COCO .json, a folder of LabelMe, VOC, YOLO or "
                                            "mask labels, an aoiflow prelabel folder, or an MVTec-layout folder"),
    out: Path = typer.Option(..., "--out", help="model folder to write (SUP)"),
    images: Optional[Path] = ImagesOpt,
    fmt: Optional[str] = LabelFormatOpt,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML supervised settings (model, train, infer), "
                                                                 "partial is fine; flags replace its values"),
    steps: Optional[int] = typer.Option(None, callback=_at_least(1), help="optimiser steps (default 2000)"),
    batch_size: Optional[int] = typer.Option(None, help="images per step (default 8)"),
    image_size: Optional[int] = typer.Option(None, help="model input size, a power of two from 32 to 512 "
                                                        "(default 128)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate of the one-cycle schedule (default 0.002)"),
    seed: Optional[int] = typer.Option(None, help="random seed (default 0)"),
    include_train_good: bool = TrainGoodOpt,
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    quiet: bool = QuietOpt,
) -> None:
    """Train the defect-kind model: SUP/model.pt (best on validation), checkpoint.pt, history.csv, config.yaml."""
    from aoiflow.supervised.config import build_supervised_config
    from aoiflow.supervised.train import fit_supervised
    from aoiflow.train import TrainingInterrupted

    _short_warnings()
    flags = {"--steps": ("train.steps", steps), "--batch-size": ("train.batch_size", batch_size),
             "--lr": ("train.lr", lr), "--seed": ("train.seed", seed), "--threads": ("train.threads", threads),
             "--image-size": ("model.image_size", image_size)}
    overrides: dict[str, dict[str, Any]] = {}
    for field, value in flags.values():
        section, key = field.split(".")
        overrides.setdefault(section, {})[key] = value
    try:
        if resume and config is None and (out / "config.yaml").is_file():
            config = out / "config.yaml"
        cfg = build_supervised_config(config, overrides, {field: flag for flag, (field, _) in flags.items()})
        _limit_pixels(max_pixels)
        result = fit_supervised(labels, out, cfg, images=images, format=fmt, include_train_good=include_train_good,
                                resume=resume, progress=not quiet)
    except TrainingInterrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except _supervised_errors() as exc:
        _fail(exc)
    for path, why in result.skipped:
        typer.echo(f"skipped {path}: {why}", err=True)
    best = "–" if result.best_miou is None else f"{result.best_miou:.3f} at step {result.best_step}"
    typer.echo(f"{len(result.class_names)} kind(s): {', '.join(result.class_names)}; {result.n_train} training and "
               f"{result.n_val} validation images; {result.steps_done} steps, best validation mIoU {best} "
               f"-> {result.model_path}")


@supervise_app.command("test")
def supervise_test(
    sup: Path = typer.Argument(..., help="model folder written by `aoiflow supervise train`"),
    data: Path = typer.Argument(..., help="labelled test set, any form `supervise train` reads (e.g. an MVTec "
                                          "folder: test/<kind> with ground_truth/<kind>)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default SUP/eval)"),
    images: Optional[Path] = ImagesOpt,
    fmt: Optional[str] = LabelFormatOpt,
    include_train_good: bool = TrainGoodOpt,
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Judge the model on labelled images: metrics.json, predictions.csv, confusion.png, examples.png, report.html."""
    from aoiflow.supervised.evaluate import evaluate_supervised

    _short_warnings()
    try:
        _limit_pixels(max_pixels)
        metrics = evaluate_supervised(sup, data, out, images=images, format=fmt,
                                      include_train_good=include_train_good, progress=not quiet, threads=threads)
    except _supervised_errors() as exc:
        _fail(exc)
    summary = {"pixel_mean_iou": metrics["pixel"]["mean_iou"],
               "region_precision": metrics["regions_iou_0.5"]["all"]["precision"],
               "region_recall": metrics["regions_iou_0.5"]["all"]["recall"],
               "image_accuracy": metrics["image"]["accuracy"], "image_auroc": metrics["image"]["auroc"],
               "kind_accuracy": metrics["image"]["kind_accuracy"],
               "per_class_iou": {k: v["iou"] for k, v in metrics["pixel"]["per_class"].items() if k != "background"}}
    typer.echo(json.dumps(summary, indent=1))
    for s in metrics["skipped"]:
        typer.echo(f"skipped {s['path']}: {s['reason']}", err=True)
    typer.echo(f"report: {(out or sup / 'eval') / 'report.html'}")


@supervise_app.command("export")
def supervise_export(
    sup: Path = typer.Argument(..., help="model folder written by `aoiflow supervise train` (or its model.pt)"),
    out: Path = typer.Argument(..., help="output file: .onnx (ONNX Runtime) or .xml (OpenVINO IR, .bin beside it)"),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Export the defect-kind model (image -> class probabilities) as ONNX or OpenVINO, classes and settings
    in the file; OUT's suffix chooses."""
    import torch

    from aoiflow.export import ExportError
    from aoiflow.supervised.export import export_supervised_onnx, export_supervised_openvino

    writers = {".onnx": export_supervised_onnx, ".xml": export_supervised_openvino}
    if out.suffix.lower() not in writers:
        _fail(ExportError(f"{out}: the exported model is written as a .onnx (ONNX Runtime) or .xml (OpenVINO) file"))
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        path = writers[out.suffix.lower()](sup, out)
    except _supervised_errors() as exc:
        _fail(exc)
    typer.echo(f"exported -> {path} (use it as `--supervised {path}` wherever a SUP folder is taken)")


_SERVE_RENAMED = {"new_kind_k": "--new-kind-group"}  # serve flags not named after their ServiceSettings field


def _serve_flag(field: str) -> str:
    return _SERVE_RENAMED.get(field, "--" + field.replace("_", "-"))


def _new_kind_default(field: str) -> Any:
    return ServiceSettings.model_fields[field].default


def _blame_serve_flag(err: Any) -> str:
    """One refused setting, named by serve's flag; a check across settings (no field of its own)
    has each setting its message names replaced by the flag."""
    msg = err["msg"].removeprefix("Value error, ")
    if err["loc"]:
        return f"{_serve_flag(str(err['loc'][0]))}: {msg}"
    fields = ServiceSettings.model_fields
    return re.sub(r"\b[a-z]+(?:_[a-z0-9]+)+\b", lambda m: _serve_flag(m[0]) if m[0] in fields else m[0], msg)


def _service_settings(values: dict[str, Any]) -> ServiceSettings:
    """``ServiceSettings`` from serve's flags (None: not given, the setting's default); a bad value
    exits with its flag named."""
    import pydantic

    try:
        return ServiceSettings(**{field: value for field, value in values.items() if value is not None})
    except pydantic.ValidationError as exc:
        _fail(ConfigError("; ".join(_blame_serve_flag(e) for e in exc.errors())))


@app.command()
def serve(
    run: Path = typer.Option(..., "--run", help="run folder written by `aoiflow train`, or an exported .onnx/.xml model"),
    supervised: Optional[Path] = typer.Option(None, "--supervised", help="the defect-kind model from `aoiflow "
                                                                        "supervise train`: verdicts ok, "
                                                                        "defect:<kind> or unknown_anomaly"),
    db: Optional[str] = typer.Option(None, "--db", help="database URL, e.g. postgresql+psycopg://user:pw@host/db "
                                                        "(default sqlite:///DATA_DIR/aoiflow.db)"),
    data_dir: Path = typer.Option(Path("aoiflow-line"), "--data-dir", help="folder for images, overlays, the retry "
                                                                           "spool and the default database"),
    watch: Optional[Path] = typer.Option(None, "--watch", help="also inspect every new image in this folder "
                                                               "(recursively), each once, also across restarts"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", help="port to listen on"),
    token: Optional[str] = typer.Option(None, "--token", envvar="AOIFLOW_TOKEN", show_envvar=False,
                                        help="bearer token required for writes (or set AOIFLOW_TOKEN)"),
    read_token: bool = typer.Option(False, "--read-token", help="require the token for reads too"),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", help="largest upload accepted, in MiB"),
    queue: int = typer.Option(64, "--queue", callback=_at_least(1), help="inspections that may wait for the model "
                                                                          "before uploads get 503"),
    raw: bool = RawOpt,
    threshold: Optional[float] = typer.Option(None, help="override the stored decision threshold on A"),
    overlays: str = typer.Option("anomalous", "--overlays", help="overlay PNGs for: anomalous, all or none"),
    mqtt: Optional[str] = typer.Option(None, "--mqtt", help="MQTT broker host:port for alerts and verdicts"),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="URL that alerts are POSTed to as JSON"),
    cors: list[str] = typer.Option([], "--cors", help="allow this browser origin (repeatable; CORS is off without)"),
    threads: Optional[int] = ThreadsOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    new_kind: Optional[bool] = typer.Option(None, "--new-kind/--no-new-kind",
                                            help="alert when flagged parts unlike every known kind gather into a "
                                                 "group (default on)"),
    new_kind_group: Optional[int] = typer.Option(None, "--new-kind-group",
                                                 help="alike novel parts that make a new kind: the alert fires "
                                                      f"with the last (default {_new_kind_default('new_kind_k')})"),
    new_kind_window: Optional[int] = typer.Option(None, "--new-kind-window",
                                                  help="inspections a new kind's parts must gather within, at least "
                                                       "--new-kind-group (default "
                                                       f"{_new_kind_default('new_kind_window')})"),
    new_kind_margin: Optional[float] = typer.Option(None, "--new-kind-margin",
                                                    help="a part is novel beyond this many radii of every known kind; "
                                                         "larger: fewer, surer alerts (at least 1, default "
                                                         f"{_new_kind_default('new_kind_margin')})"),
    new_kind_min_samples: Optional[int] = typer.Option(None, "--new-kind-min-samples",
                                                       help="labelled parts a kind needs to count as known (default "
                                                            f"{_new_kind_default('new_kind_min_samples')})"),
    new_kind_min_normals: Optional[int] = typer.Option(None, "--new-kind-min-normals",
                                                       help="stored passing parts needed before the rule judges any "
                                                            "part, at most --new-kind-passing (default "
                                                            f"{_new_kind_default('new_kind_min_normals')})"),
    new_kind_passing: Optional[int] = typer.Option(None, "--new-kind-passing",
                                                   help="newest passing parts the reference of normal is fitted on "
                                                        f"(default {_new_kind_default('new_kind_passing')})"),
    new_kind_labelled: Optional[int] = typer.Option(None, "--new-kind-labelled",
                                                    help="newest labelled parts the known kinds are fitted on "
                                                         f"(default {_new_kind_default('new_kind_labelled')})"),
    new_kind_refit_every: Optional[int] = typer.Option(None, "--new-kind-refit-every",
                                                       help="inspections between refits of the known kinds from the "
                                                            "store (default "
                                                            f"{_new_kind_default('new_kind_refit_every')})"),
) -> None:
    """Run the line service: HTTP API (docs at /docs), store, folder watcher, alerts."""
    import logging

    import uvicorn

    from aoiflow.service.app import create_app
    from aoiflow.service.pipeline import default_loader

    _short_warnings()
    settings = _service_settings(dict(
        run=run, supervised=supervised, db=db, data_dir=data_dir, watch=watch, host=host, port=port,
        token=token or None, read_token=read_token, max_upload_mb=max_upload_mb, queue=queue, raw=raw,
        threshold=threshold, overlays=overlays, mqtt=mqtt, webhook=webhook, cors=cors,
        threads=threads or DEFAULT_THREADS, max_pixels=max_pixels, new_kind=new_kind, new_kind_k=new_kind_group,
        new_kind_window=new_kind_window, new_kind_margin=new_kind_margin, new_kind_min_samples=new_kind_min_samples,
        new_kind_min_normals=new_kind_min_normals, new_kind_passing=new_kind_passing,
        new_kind_labelled=new_kind_labelled, new_kind_refit_every=new_kind_refit_every))
    if settings.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host} without --token: anyone who can reach it may upload, review and "
                    "switch models", fg=typer.colors.YELLOW, err=True)
    try:
        _limit_pixels(max_pixels)
        inspector = default_loader(settings)(run, supervised)
    except _known_errors() as exc:
        _fail(exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    typer.echo(f"serving {inspector.version} on http://{host}:{port} (API docs at /docs; data in {data_dir})")
    uvicorn.run(create_app(settings, inspector=inspector), host=host, port=port, log_level="info")


@app.command("replay")
def replay_command(
    frames: Path = typer.Argument(..., help="an image or a folder of images (recursively, in name order)"),
    to: str = typer.Option(..., "--to", help="the service's URL, e.g. http://127.0.0.1:8000"),
    fps: Optional[float] = typer.Option(None, "--fps", help="frames per second to send (default: as fast as "
                                                             "the service answers)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="AOIFLOW_TOKEN", show_envvar=False,
                                        help="bearer token (or set AOIFLOW_TOKEN)"),
    concurrency: int = typer.Option(1, "--concurrency", callback=_at_least(1), help="client connections at once"),
    source: str = typer.Option("replay", "--source", help="source name recorded with each inspection"),
) -> None:
    """Post a folder of frames to a running service at a set rate; report sent/ok/errors and latency."""
    from aoiflow.service.replay import frames_in, replay

    if fps is not None and fps <= 0:
        _fail(ConfigError(f"--fps {fps}: must be positive"))
    try:
        paths = frames_in(frames)
    except FileNotFoundError as exc:
        _fail(exc)
    if not paths:
        _fail(ConfigError(f"{frames}: contains no images"))
    result = replay(paths, to, fps=fps, token=token, concurrency=concurrency, source=source)
    typer.echo(result.summary())
    if result.ok == 0:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
