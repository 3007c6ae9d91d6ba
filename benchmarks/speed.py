"""CPU inference speed of the scoring path: PyTorch eager vs ONNX Runtime fp32 vs int8.

    .venv/bin/python benchmarks/speed.py --runs runs/bench/magnetictile_tile/*  [--frames 200]

For each trained run (a preset at its reference image size): ms per frame at batch 1 (median of
--frames calls after warm-up) and frames/s at the best batch size, for every path; the scoring
graph's GFLOPs per frame and the GFLOP/s achieved, next to this CPU's fp32 peak; image AUROC of
every path on the run's test set. With --reference-width it also times untrained networks of
that width (the DCGAN reference is 64), which gives speed only. Finally the frame-to-verdict path
for a 1280x1024 frame: decode a PNG, grey, resize, score. Threads: 2.

The two-stage verdict (GANomaly, then the supervised defect-kind model), against the line's 30 ms:

    .venv/bin/python benchmarks/speed.py --two-stage --runs RUN --sup SUP  [--data DATA] [--frames 200]

times one decoded frame through ``Inspector``'s own path (model input, GANomaly scoring, map,
decision; then the supervised probabilities and the verdict rule) with and without the supervised
model, interleaved call by call so both see the same load; median ms, the ratio and the 30 ms line
budget, for PyTorch and for both models exported to ONNX Runtime and to OpenVINO. Without --runs / --sup it trains
tiny ones (1 epoch / 20 steps: weights do not change the time) at the reference sizes on a
generated surface set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.flop_counter import FlopCounterMode

from aoiflow import data
from aoiflow.export import ExportedModel, OpenVinoModel, export_onnx, export_openvino
from aoiflow.model import build_networks
from aoiflow.runs import TrainedModel, save_checkpoint
from aoiflow.scoring import ScoringGraph

PEAK_GFLOPS = 290.0  # 2 cores x AVX-512 FMA (2 x 16 fp32 FMA per cycle) at ~4.5 GHz
THREADS = 2


def median_ms(fn, x, calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def gflops_per_frame(graph: ScoringGraph, channels: int, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        graph(torch.rand(1, channels, size, size))
    return counter.get_total_flops() / 1e9


def paths_for(run: Path, workdir: Path, data_root: Path | None) -> dict:
    """The scoring callables of one run: name -> fn(np batch) -> A scores."""
    model = TrainedModel.load(run)
    graph = ScoringGraph(model.generator, model.config.scoring, model.calibration, model.map_stats, model.head).eval()
    graph_cl = ScoringGraph(model.generator, model.config.scoring, model.calibration, model.map_stats, model.head).eval().to(
        memory_format=torch.channels_last)

    def eager(x):
        with torch.inference_mode():
            return graph(torch.from_numpy(x))[2].numpy()

    def eager_cl(x):
        with torch.inference_mode():
            return graph_cl(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))[2].numpy()

    fp32 = ExportedModel(export_onnx(run, workdir / f"{run.name}.onnx"), THREADS)
    q = ExportedModel(export_onnx(run, workdir / f"{run.name}-int8.onnx", int8=True, data_root=data_root), THREADS)
    paths = {"torch eager": eager, "torch channels-last": eager_cl,
             "onnxruntime fp32": lambda x: fp32.score(x)[2], "onnxruntime int8": lambda x: q.score(x)[2]}
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"model": model, "graph": graph, "paths": paths}
    xml = export_openvino(run, workdir / f"{run.name}.xml")
    xml8 = export_openvino(run, workdir / f"{run.name}-int8.xml", int8=True, data_root=data_root)
    ov32, ovbf, ov8 = OpenVinoModel(xml, THREADS), OpenVinoModel(xml, THREADS, "bf16"), OpenVinoModel(xml8, THREADS)
    paths.update({"openvino fp32": lambda x: ov32.score(x)[2], "openvino bf16": lambda x: ovbf.score(x)[2],
                  "openvino int8": lambda x: ov8.score(x)[2]})
    return {"model": model, "graph": graph, "paths": paths}


def test_images(model: TrainedModel, data_root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    samples = data.test_samples(data_root or model.data_root)
    loaded = data.load_images([s.path for s in samples], model.channels, model.config.model.input_size)
    ok = set(loaded.paths)
    labels = np.array([s.label for s in samples if s.path in ok])
    return loaded.images.numpy(), labels


def score_all(fn, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def reference_width_run(preset_run: Path, width: int, workdir: Path) -> Path:
    """An untrained copy of a run's network at another width, with the run's calibration (timing only)."""
    state = torch.load(preset_run / "checkpoint.pt", weights_only=False)
    m = state["config"]["model"]
    g, _ = build_networks(m["image_size"], state["channels"], m["latent_size"], width, 0)
    state["config"]["model"]["base_width"] = width
    state["generator"] = g.state_dict()
    out = workdir / f"{preset_run.name}-w{width}"
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", state)
    return out


def frame_to_verdict(run: Path, workdir: Path, calls: int, data_root: Path | None) -> dict[str, float]:
    """A generated 1280x1024 LED frame as a PNG file: decode, preprocess (outline, warp, gamma),
    resize, score. Timed for the exact fp32 paths and int8; the weights do not change the time."""
    from aoiflow.config import PreprocessConfig
    from aoiflow.ledsynth import make_frame
    from aoiflow.preprocess import preprocess_frame

    frame = workdir / "frame.png"
    Image.fromarray(make_frame(3, None, np.random.default_rng(0))[0]).save(frame)
    model = TrainedModel.load(run)
    size, cfg = model.config.model.input_size, PreprocessConfig()

    def prepare(path):
        surface = preprocess_frame(data.read_image(path), cfg).image
        return data.resize_tensor(torch.from_numpy(surface)[None, None], size).numpy()

    out = {"decode PNG": median_ms(data.read_image, frame, calls),
           "decode + preprocess + resize": median_ms(prepare, frame, calls)}
    scorers = {"onnxruntime fp32": ExportedModel(export_onnx(run, workdir / "f.onnx"), THREADS),
               "onnxruntime int8": ExportedModel(export_onnx(run, workdir / "q.onnx", int8=True, data_root=data_root), THREADS)}
    try:
        scorers["openvino fp32"] = OpenVinoModel(export_openvino(run, workdir / "f.xml"), THREADS)
    except Exception:  # openvino not installed
        pass
    for name, m in scorers.items():
        out[f"frame to verdict, {name}"] = median_ms(lambda p, m=m: m.score(prepare(p)), frame, calls)
    return out


LINE_BUDGET_MS = 30.0  # the line's time per part, frame to verdict


def _tiny_two_stage(workdir: Path, args: argparse.Namespace, run: Path | None,
                    sup: Path | None) -> tuple[Path, Path, Path]:
    """(run, supervised model, data root): the given ones, or tiny ones trained here on a generated
    surface set (timing only: 1 epoch / 20 steps, at the reference sizes unless told otherwise)."""
    from aoiflow.config import build_config
    from aoiflow.supervised.config import build_supervised_config
    from aoiflow.supervised.train import fit_supervised
    from aoiflow.synth import make_surface_dataset
    from aoiflow.train import fit

    root = args.data
    if root is None and run is not None and TrainedModel.load(run).data_root:
        root = Path(TrainedModel.load(run).data_root)
    if root is None or (sup is None and not (Path(root) / "ground_truth").is_dir()):
        root = make_surface_dataset(workdir / "surfaces", n_train=24, n_test_good=6, n_per_defect=6,
                                    size=max(128, args.tiny_image_size))
    if run is None:
        cfg = build_config(None, overrides={"model": {"image_size": args.tiny_image_size,
                                                      "base_width": args.tiny_base_width},
                                            "train": {"epochs": args.tiny_epochs, "threads": args.threads}})
        fit(root, workdir / "tiny-run", cfg, progress=False)
        run = workdir / "tiny-run"
    if sup is None:
        scfg = build_supervised_config(overrides={"model": {"image_size": args.tiny_sup_size},
                                                  "train": {"steps": args.tiny_steps, "threads": args.threads,
                                                            "eval_every": args.tiny_steps}})
        fit_supervised(root, workdir / "tiny-sup", scfg, progress=False)
        sup = workdir / "tiny-sup"
    return run, sup, Path(root)


def two_stage_timing(run: Path, sup: Path, root: Path | None, workdir: Path, calls: int,
                     threads: int) -> list[dict]:
    """Frame to verdict on decoded frames, GANomaly alone vs two-stage, through ``Inspector._flush``
    (the path ``predict_files`` takes after reading a file): model input, scoring, the map at
    the image size, the decision, and with the supervised model its probabilities and the rule.
    Calls alternate between the two so load on the machine hits both alike."""
    from aoiflow.predict import Inspector
    from aoiflow.supervised.export import export_supervised_onnx, export_supervised_openvino

    images = []
    if root is not None:
        samples = data.test_samples(root)
        picked = [s for s in samples if s.label == 0][:4] + [s for s in samples if s.label == 1][:4]
        images = [(s.path, data.read_image(s.path)) for s in picked]
    if not images:  # no data: random frames at twice the model size (the time barely depends on content)
        s = 2 * TrainedModel.load(run).config.model.input_size
        images = [(Path(f"random{i}.png"), np.random.default_rng(i).random((s, s, 1), dtype=np.float32))
                  for i in range(4)]
    paths = {"torch": (run, sup)}
    paths["onnxruntime fp32"] = (export_onnx(run, workdir / "two-stage-run.onnx"),
                                 sup if Path(sup).suffix == ".onnx" else
                                 export_supervised_onnx(sup, workdir / "two-stage-sup.onnx"))
    if Path(sup).suffix not in (".onnx", ".xml"):
        paths["openvino fp32"] = (export_openvino(run, workdir / "two-stage-run.xml"),
                                  export_supervised_openvino(sup, workdir / "two-stage-sup.xml"))
    rows = []
    for name, (scorer, supervised) in paths.items():
        two = Inspector.load(scorer, threads=threads, supervised=supervised)
        one = Inspector(two.backend)  # the same GANomaly backend, no second stage
        size, channels = two.config.model.input_size, two.channels
        frames = [(p, data.to_channels(img, channels)) for p, img in images]

        def judge(inspector, k, frames=frames, channels=channels, size=size):
            path, image = frames[k % len(frames)]
            x = data.to_model_input(image, channels, size)
            return next(iter(inspector._flush([(path, x, image, None)])))

        for k in range(5):  # warm-up
            judge(one, k), judge(two, k)
        t_one, t_two, verdicts = [], [], {}
        for k in range(calls):
            for inspector, times in ((one, t_one), (two, t_two)) if k % 2 == 0 else ((two, t_two), (one, t_one)):
                t0 = time.perf_counter()
                pred = judge(inspector, k)
                times.append((time.perf_counter() - t0) * 1000)
                if inspector is two:
                    verdicts[pred.verdict] = verdicts.get(pred.verdict, 0) + 1
        ms1, ms2 = statistics.median(t_one), statistics.median(t_two)
        rows.append(dict(path=name, ganomaly_ms=ms1, two_stage_ms=ms2, second_stage_ms=ms2 - ms1, ratio=ms2 / ms1,
                         budget_ms=LINE_BUDGET_MS, within_budget=ms2 <= LINE_BUDGET_MS, calls=calls,
                         threads=threads, ganomaly_size=size, supervised_size=two.supervised.image_size,
                         frame_hw=list(frames[0][1].shape[:2]), verdicts=verdicts, run=str(scorer),
                         supervised=str(supervised)))
    return rows


def print_two_stage(rows: list[dict]) -> None:
    r0 = rows[0]
    print(f"\nframe to verdict, one decoded frame (first {r0['frame_hw'][1]}x{r0['frame_hw'][0]} px), GANomaly "
          f"{r0['ganomaly_size']} px, supervised {r0['supervised_size']} px, threads {r0['threads']}, median of "
          f"{r0['calls']} interleaved calls; line budget {LINE_BUDGET_MS:.0f} ms")
    print("| path | GANomaly alone ms | two-stage ms | second stage ms | ratio | budget 30 ms | verdicts seen |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        seen = ", ".join(f"{v} {n}" for v, n in sorted(r["verdicts"].items()))
        print(f"| {r['path']} | {r['ganomaly_ms']:.2f} | {r['two_stage_ms']:.2f} | {r['second_stage_ms']:.2f} | "
              f"{r['ratio']:.2f}x | {'within' if r['within_budget'] else 'OVER'} ({r['two_stage_ms']:.1f} of "
              f"{LINE_BUDGET_MS:.0f}) | {seen} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, default=None, help="trained runs (required unless --two-stage)")
    ap.add_argument("--data", type=Path, default=None, help="data root, for runs that do not record theirs")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--reference-width", type=int, default=64)
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--frame-only", action="store_true", help="only the frame-to-verdict timings")
    two = ap.add_argument_group("two-stage verdict (--two-stage)")
    two.add_argument("--two-stage", action="store_true", help="time GANomaly + supervised model + verdict rule per "
                                                               "frame against GANomaly alone, and stop")
    two.add_argument("--sup", type=Path, default=None, help="supervised model (SUP folder, model.pt or exported "
                                                            ".onnx); default: a tiny one trained here")
    two.add_argument("--threads", type=int, default=THREADS, help=f"threads for the two-stage timing ({THREADS})")
    two.add_argument("--tiny-image-size", type=int, default=128, help="GANomaly size of a tiny run trained here")
    two.add_argument("--tiny-base-width", type=int, default=32, help="GANomaly width of a tiny run trained here")
    two.add_argument("--tiny-sup-size", type=int, default=128, help="size of a tiny supervised model trained here")
    two.add_argument("--tiny-epochs", type=int, default=1)
    two.add_argument("--tiny-steps", type=int, default=20)
    two.add_argument("--json", type=Path, default=None, help="also write the two-stage rows as JSON here")
    args = ap.parse_args()
    if not args.runs and not args.two_stage:
        ap.error("--runs is required (or --two-stage, which trains tiny models when no run is given)")
    torch.set_num_threads(THREADS)
    workdir = Path(tempfile.mkdtemp(prefix="aoiflow-speed-"))

    if args.two_stage:
        torch.set_num_threads(args.threads)
        given = args.runs[0] if args.runs else None
        run, sup, root = _tiny_two_stage(workdir, args, given, args.sup)
        rows = two_stage_timing(run, sup, root, workdir, args.frames, args.threads)
        print_two_stage(rows)
        if args.json:
            import json

            args.json.write_text(json.dumps(rows, indent=1))
        return

    rows = []
    for run in args.runs:
        if args.frame_only:
            timings = frame_to_verdict(run, workdir, min(args.frames, 50), args.data)
            print(f"{run.name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()), flush=True)
            continue
        kinds = [(run, True)]
        if args.reference_width:
            kinds.append((reference_width_run(run, args.reference_width, workdir), False))
        for r, trained in kinds:
            bundle = paths_for(r, workdir, args.data)
            model, graph = bundle["model"], bundle["graph"]
            s, c = model.config.model.input_size, model.channels
            gf = gflops_per_frame(graph, c, s)
            images, labels = test_images(model, args.data) if trained else (None, None)
            ref_scores = None
            for name, fn in bundle["paths"].items():
                x1 = np.random.default_rng(1).random((1, c, s, s), dtype=np.float32)
                ms1 = median_ms(fn, x1, args.frames)
                fps = max(b / median_ms(fn, np.repeat(x1, b, 0), max(5, args.frames // b)) * 1000 for b in args.batches)
                auroc = None
                if trained:
                    scores = score_all(fn, images)
                    auroc = roc_auc_score(labels, scores)
                    ref_scores = scores if ref_scores is None else ref_scores
                rows.append(dict(run=str(run), preset=model.config.preset, width=model.config.model.base_width,
                                 size=s, path=name, ms_b1=ms1, fps=fps, gflops=gf, achieved=gf / ms1 * 1000,
                                 auroc=auroc))
                print(rows[-1], flush=True)
        timings = frame_to_verdict(run, workdir, min(args.frames, 50), args.data)
        print(f"{run.name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()), flush=True)

    print(f"\nthreads {THREADS}; fp32 peak of this CPU ≈ {PEAK_GFLOPS:.0f} GFLOP/s")
    print("| preset | width | px | path | ms/frame b1 | frames/s best batch | GFLOPs/frame | GFLOP/s (b1) | % of fp32 peak | image AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        au = "– (untrained)" if r["auroc"] is None else f"{r['auroc']:.3f}"
        print(f"| {r['preset']} | {r['width']} | {r['size']} | {r['path']} | {r['ms_b1']:.2f} | {r['fps']:.0f} | "
              f"{r['gflops']:.2f} | {r['achieved']:.0f} | {100 * r['achieved'] / PEAK_GFLOPS:.0f} % | {au} |")


if __name__ == "__main__":
    main()
