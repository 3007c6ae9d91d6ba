"""CPU inference speed of the scoring path: PyTorch eager vs ONNX Runtime fp32 vs int8.

    .venv/bin/python benchmarks/speed.py --runs runs/bench/magnetictile_tile/*  [--frames 200]

For each trained run (a preset at its reference image size): ms per frame at batch 1 (median of
--frames calls after warm-up) and frames/s at the best batch size, for every path; the scoring
graph's GFLOPs per frame and the GFLOP/s achieved, next to this CPU's fp32 peak; image AUROC of
every path on the run's test set. With --reference-width it also times untrained networks of
that width (the DCGAN reference is 64), which gives speed only. Finally the frame-to-verdict path
for a 1280x1024 frame: decode a PNG, grey, resize, score. Threads: 2.
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
    loaded = data.load_images([s.path for s in samples], model.channels, model.config.model.image_size)
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
    size, cfg = model.config.model.image_size, PreprocessConfig()

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="data root, for runs that do not record theirs")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--reference-width", type=int, default=64)
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--frame-only", action="store_true", help="only the frame-to-verdict timings")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    workdir = Path(tempfile.mkdtemp(prefix="aoiflow-speed-"))

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
            s, c = model.config.model.image_size, model.channels
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
