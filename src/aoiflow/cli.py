"""Command line: ``aoiflow train | test | tune | predict | prelabel | preprocess | synth | export | demo``.

Parses flags, calls the library, prints; known errors become one red line and exit code 2.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import typer

from aoiflow.config import PRESET_NAMES, ConfigError, build_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="aoiflow: learn normal parts from normal images, flag and locate anything else.")


def _known_errors() -> tuple[type[Exception], ...]:
    from aoiflow.data import DataLayoutError, ImageReadError
    from aoiflow.export import ExportError
    from aoiflow.runs import RunError

    return (ConfigError, DataLayoutError, ImageReadError, RunError, ExportError)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _short_warnings() -> None:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


PresetOpt = typer.Option(None, "--preset", help=f"one of: {', '.join(PRESET_NAMES)}")
ConfigOpt = typer.Option(None, "--config", exists=False, help="YAML settings (partial is fine)")


@app.command()
def train(
    data: Path = typer.Argument(..., help="dataset root in MVTec layout (uses DATA/train/good)"),
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    epochs: Optional[int] = typer.Option(None, help="training epochs"),
    batch_size: Optional[int] = typer.Option(None, help="images per step"),
    image_size: Optional[int] = typer.Option(None, help="model input size (power of two, 32-256)"),
    base_width: Optional[int] = typer.Option(None, help="channels of the first conv layer"),
    seed: Optional[int] = typer.Option(None, help="random seed"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Train GANomaly on normal images; writes RUN/checkpoint.pt, config.yaml, history.csv."""
    from aoiflow.train import fit

    _short_warnings()
    overrides = {"train": {"epochs": epochs, "batch_size": batch_size, "seed": seed},
                 "model": {"image_size": image_size, "base_width": base_width}}
    try:
        if preset is None and config is None and not resume:
            preset = "ganomaly-ssim-ssim"
        if resume and preset is None and config is None and (out / "config.yaml").is_file():
            config = out / "config.yaml"
        cfg = build_config(preset, config, overrides)
        ckpt = fit(data, out, cfg, resume=resume, progress=not quiet)
    except _known_errors() as exc:
        _fail(exc)
    typer.echo(f"trained {cfg.preset or 'custom config'} -> {ckpt}")


@app.command()
def test(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    data: Path = typer.Argument(..., help="dataset root with DATA/test/<good|defect>/"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default RUN/eval)"),
    threshold: Optional[float] = typer.Option(None, help="override the stored decision threshold on A"),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="file listing test images to leave out "
                                           "(one per line, relative to DATA), e.g. TUNE/validation_anomalies.txt"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Score DATA/test: metrics.json, scores.csv, roc.png, score_hist.png, panel.png, report.html."""
    from aoiflow.evaluate import evaluate, read_exclude_list

    _short_warnings()
    try:
        left_out = read_exclude_list(exclude, data) if exclude else None
        metrics = evaluate(run, data, out, threshold, progress=not quiet, exclude=left_out)
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
    epochs: Optional[int] = typer.Option(None, help="training epochs per trial (default: the preset's 200; "
                                                     "a search on a CPU wants far fewer, e.g. 8)"),
    batch_size: Optional[int] = typer.Option(None, help="images per step"),
    base_width: Optional[int] = typer.Option(None, help="channels of the first conv layer"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    image_sizes: Optional[str] = typer.Option(None, help="image sizes to search (default 64,128,256)"),
    latent_sizes: Optional[str] = typer.Option(None, help="latent sizes to search (default 64,100,128,256,512,1024)"),
    val: Optional[Path] = typer.Option(None, "--val", help="labelled validation images: VAL/<defect>/ (and VAL/good)"),
    val_fraction: float = typer.Option(0.2, help="without --val: this fraction of each defect type in DATA/test "
                                                 "validates and is left out of the final test"),
    seed: int = typer.Option(0, help="seed of the sampler and of the validation split"),
    resume: bool = typer.Option(False, "--resume", help="continue the search in --out"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Three-stage random search over loss weights, latent and image size, SSIM windows and lambda."""
    from aoiflow.tune import SearchSpace, TuneError, TuneSettings, split_trials, tune as run_tune

    _short_warnings()
    try:
        if preset is None and config is None:
            preset = "ganomaly-ssim-ssim"
        base = build_config(preset, config, {"train": {"epochs": epochs, "batch_size": batch_size, "lr": lr},
                                             "model": {"base_width": base_width}})
        narrowed = {"image_sizes": _int_list(image_sizes, "--image-sizes"),
                    "latent_sizes": _int_list(latent_sizes, "--latent-sizes")}
        space = SearchSpace(**{k: v for k, v in narrowed.items() if v})
        per_stage = _int_list(stage_trials, "--stage-trials") or split_trials(trials)
        settings = TuneSettings(stage_trials=per_stage, top_few=top, val_fraction=val_fraction,
                                val_dir=str(val) if val else None, seed=seed)
        outcome = run_tune(data, out, base, space, settings, resume=resume, progress=not quiet)
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
def predict(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`, or an exported .onnx/.xml model"),
    target: Path = typer.Argument(..., help="an image file or a folder of images"),
    out: Path = typer.Option(..., "--out", help="folder for predictions.csv and maps/"),
    threshold: Optional[float] = typer.Option(None, help="override the stored decision threshold on A"),
    no_maps: bool = typer.Option(False, "--no-maps", help="skip writing anomaly-map PNGs"),
    raw: bool = typer.Option(False, "--raw", help="inputs are raw frames: apply the run's preprocessing first"),
    precision: str = typer.Option("f32", help="OpenVINO models: f32 (exact) or bf16 (faster where the CPU has it)"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Judge new images: OUT/predictions.csv (path, R, L, A, decision) and OUT/maps/*.png."""
    from aoiflow.predict import Inspector, predict_to_folder

    _short_warnings()
    try:
        if precision not in ("f32", "bf16"):
            raise ConfigError(f"--precision {precision!r}: choose f32 or bf16")
        inspector = Inspector.load(run, threshold, precision=precision)
        results = predict_to_folder(inspector, target, out, write_maps=not no_maps, progress=not quiet, raw=raw)
    except _known_errors() as exc:
        _fail(exc)
    bad = [r for r in results if r.status != "ok"]
    flagged = sum(r.decision == "anomalous" for r in results)
    typer.echo(f"{len(results) - len(bad)} scored, {flagged} anomalous, {len(bad)} not scored -> {out / 'predictions.csv'}")
    for r in bad:
        typer.echo(f"skipped {r.path}: {r.reason}", err=True)


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
    raw: bool = typer.Option(False, "--raw", help="inputs are raw frames: apply the run's preprocessing first"),
    yolo_segments: bool = typer.Option(False, "--yolo-segments", help="YOLO files with polygons instead of boxes"),
    no_review: bool = typer.Option(False, "--no-review", help="skip the review sheet PNGs"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Turn anomaly maps into label files (LabelMe/VOC/COCO/YOLO/masks) and review sheets."""
    from aoiflow.predict import Inspector
    from aoiflow.prelabel import default_region_settings, prelabel_folder

    _short_warnings()
    try:
        inspector = Inspector.load(run, threshold)
        settings = default_region_settings(inspector, pixel_threshold, min_area=min_area, opening=opening,
                                           closing=closing, label=label)
        summary = prelabel_folder(inspector, images, out, fmt, settings, review=not no_review, progress=not quiet,
                                  raw=raw, label_from_folder=label_from_folder, yolo_segments=yolo_segments)
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
    config: Optional[Path] = ConfigOpt,
    size: Optional[int] = typer.Option(None, help="output surface-map size in pixels"),
    margin: Optional[float] = typer.Option(None, help="margin around the part, fraction of its side"),
    threshold: Optional[str] = typer.Option(None, help="'otsu' or a fixed grey level 0-255"),
    orient: Optional[str] = typer.Option(None, help="'dark_corner' (turn the dark mark top-left) or 'none'"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Raw frames -> canonical, gamma-normalised surface maps; OUT/outlines.csv lists every frame."""
    from aoiflow.preprocess import preprocess_folder

    _short_warnings()
    thr = int(threshold) if threshold and threshold.isdigit() else threshold
    try:
        cfg = build_config(config_file=config, overrides={"preprocess": {
            "size": size, "margin": margin, "threshold": thr, "orient": orient}}).preprocess
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
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Generate 1280x1024 LED frames with plate-rift, unclean and glue-overflow defects and masks."""
    from aoiflow.ledsynth import make_led_dataset

    if scale <= 0 or severity <= 0:
        _fail(ValueError("--scale and --severity must be positive"))
    make_led_dataset(out, scale=scale, seed=seed, severity=severity, progress=not quiet)
    typer.echo(f"frames -> {out}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder written by `aoiflow train`"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .onnx file (default RUN/model[-int8].onnx)"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime) or openvino (IR .xml/.bin)"),
    int8: bool = typer.Option(False, "--int8", help="int8 convolutions, calibrated on training normals"),
    data: Optional[Path] = typer.Option(None, "--data", help="training data root for int8 calibration (default: the run's)"),
) -> None:
    """Export the scoring graph (image -> R, L, A, anomaly map) with its calibration in the file."""
    from aoiflow.export import export_onnx, export_openvino

    if fmt not in ("onnx", "openvino"):
        _fail(ValueError(f"--format {fmt!r}: choose onnx or openvino"))
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    target = out or run / (("model-int8" if int8 else "model") + suffix)
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
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """The whole line on generated LED frames: generate, preprocess, train 3 presets, evaluate, report."""
    from aoiflow.demo import run_led_demo

    _short_warnings()
    report = run_led_demo(out, scale=scale, epochs=epochs, progress=not quiet, log=typer.echo)
    typer.echo(f"report: {report}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
