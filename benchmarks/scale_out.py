"""Throughput with 1 and 2 processes: DDP training, a shared parameter search, Ray batch inspection.

    .venv/bin/python benchmarks/scale_out.py [--parts train,tune,predict] [--storage URL]
                                             [--train-images 96] [--images 6000]

Everything runs on generated surfaces (aoiflow.synth), in a temporary folder. Each part prints
its figure for one process, two processes and the ratio:

- train: images/s of ``aoiflow train`` at 128 px, base width 32, batch 16, epochs 2.. (history.csv's
  epoch times: no start-up, no calibration), one process with 1 and with 2 threads, and torchrun
  with 2 processes of 1 thread;
- tune: trials/min of a shared search in a fresh schema of the PostgreSQL database --storage
  (default $AOIFLOW_TEST_PG_URL; skipped without), 1 worker vs 2 workers of 1 thread, timed from
  the first trial's start to the last one's end in the study (no start-up, no final test);
- predict: images/s of ``aoiflow predict`` on the exported model, one process (1 and 2 threads)
  and Ray Data with 1 and 2 workers of 1 thread (a local Ray). A Ray call spends seconds starting
  its workers; its figure is the marginal rate, (--images - 200) / (time for --images - time for
  200), with the whole call's rate beside it.

A machine with N cores gains at most N x; other load on it shows in the figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

AOIFLOW = [sys.executable, "-m", "aoiflow.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _config(root: Path, image_size: int, epochs: int, width: int = 16) -> Path:
    path = root / f"bench_{image_size}_{width}.yaml"
    path.write_text(f"""preset: ganomaly-ssim-ssim
model: {{image_size: {image_size}, base_width: {width}, latent_size: 32}}
train: {{epochs: {epochs}, batch_size: 16, lr_schedule: constant, val_fraction: 0.1}}
""")
    return path


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def _line(what: str, one: float, two: float, unit: str, base: str = "1 process", more: str = "2 processes") -> None:
    print(f"  {what:<34} {base} {one:8.1f} {unit}   {more} {two:8.1f} {unit}   ratio {two / one:.2f}x")


def bench_train(root: Path, data: Path) -> None:
    config = _config(root, 128, 3, width=32)  # the default size at half the default width
    n_train = sum(1 for _ in (data / "train" / "good").iterdir())
    rates = {}
    for label, cmd in {
        "1 process, 1 thread": AOIFLOW + ["train", str(data), "--threads", "1"],
        "1 process, 2 threads": AOIFLOW + ["train", str(data), "--threads", "2"],
        "2 processes, 1 thread each": TORCHRUN + ["--nproc-per-node=2", "-m", "aoiflow.cli", "train", str(data)],
    }.items():
        run = root / f"train_{len(rates)}"
        wall = _run(cmd + ["--config", str(config), "--out", str(run), "--quiet"])
        with open(run / "history.csv") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f)][1:]  # epoch 1 warms up
        rates[label] = n_train * 0.9 * len(seconds) / sum(seconds)  # 10 % are held out
        print(f"  train, {label:<28} {rates[label]:7.1f} images/s  (whole command {wall:.0f} s)")
    _line("train images/s, 1 thread per process", rates["1 process, 1 thread"],
          rates["2 processes, 1 thread each"], "img/s")
    _line("train images/s, both cores busy", rates["1 process, 2 threads"], rates["2 processes, 1 thread each"],
          "img/s", "1 proc x 2 thr", "2 procs x 1 thr")


def _trials_per_minute(storage: str, study: str) -> tuple[float, int]:
    import optuna

    trials = [t for s in (1, 2, 3) for t in optuna.load_study(study_name=f"{study}.stage{s}", storage=storage)
              .get_trials() if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return 60 * len(trials) / span, len(trials)


@contextmanager
def _schema(url: str) -> Iterator[str]:
    """A URL into a fresh PostgreSQL schema of its own, dropped afterwards (Optuna's tables must
    not share a schema with another application's, such as the service store's)."""
    import sqlalchemy as sa

    from aoiflow.tune import storage_url

    url, schema = storage_url(url), f"scale_out_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    base = sa.make_url(url)
    try:
        yield base.set(query={**base.query, "options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def bench_tune(root: Path, data: Path, database: str) -> None:
    with _schema(database) as storage:
        _bench_tune(root, data, storage)


def _bench_tune(root: Path, data: Path, storage: str) -> None:
    config = _config(root, 32, 6)
    rates = []
    for workers in (1, 2):
        study = f"bench-{uuid.uuid4().hex[:8]}"
        cmd = AOIFLOW + ["tune", str(data), "--config", str(config), "--stage-trials", "6,4,2", "--image-sizes", "32",
                         "--latent-sizes", "16,32", "--threads", "1", "--storage", storage, "--study", study,
                         "--heartbeat", "5", "--quiet"]
        procs = [subprocess.Popen(cmd + ["--out", str(root / f"{study}_{i}")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for i in range(workers)]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"tune worker failed: {p.stderr.read().decode()[-2000:]}")
        rate, n = _trials_per_minute(storage, study)
        rates.append(rate)
        print(f"  tune, {workers} worker(s), 1 thread each       {rate:7.1f} trials/min ({n} trials)")
    _line("tune trials/min", rates[0], rates[1], "tr/min", "1 worker", "2 workers")


def bench_predict(root: Path, data: Path, n_images: int) -> None:
    import ray

    from aoiflow.batch import predict_with_ray
    from aoiflow.export import export_onnx
    from aoiflow.predict import Inspector, predict_to_folder

    run = root / "train_0" if (root / "train_0" / "model.pt").is_file() else root / "predict_run"
    if not (run / "model.pt").is_file():
        _run(AOIFLOW + ["train", str(data), "--config", str(_config(root, 64, 2)), "--out", str(run), "--quiet"])
    model = export_onnx(run, run / "model.onnx")
    few, many = _frames(data, root / "few", 200), _frames(data, root / "many", n_images)
    rates = {}
    for threads in (1, 2):
        t0 = time.perf_counter()
        predict_to_folder(Inspector.load(model, threads=threads), many, root / f"local_{threads}", write_maps=False,
                          progress=False)
        rates[f"local {threads}"] = n_images / (time.perf_counter() - t0)
        print(f"  predict, one process, {threads} thread(s)        {rates[f'local {threads}']:7.1f} images/s")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        for workers in (1, 2):
            seconds = {}
            for frames in (few, many):
                t0 = time.perf_counter()
                predict_with_ray(run, frames, root / f"ray_{workers}_{frames.name}", threads=1, workers=workers,
                                 write_maps=False, progress=False)
                seconds[frames.name] = time.perf_counter() - t0
            # the larger run less the smaller: what each further image costs, without Ray's start-up
            rates[f"ray {workers}"] = (n_images - 200) / (seconds["many"] - seconds["few"])
            print(f"  predict, Ray, {workers} worker(s) x 1 thread       {rates[f'ray {workers}']:7.1f} images/s "
                  f"(whole call {n_images / seconds['many']:.1f} images/s, 200 images took {seconds['few']:.1f} s)")
    finally:
        ray.shutdown()
    _line("predict images/s on Ray", rates["ray 1"], rates["ray 2"], "img/s", "1 worker", "2 workers")
    _line("predict images/s, both cores busy", rates["local 2"], rates["ray 2"], "img/s", "1 proc x 2 thr",
          "Ray 2 x 1 thr")


def _frames(data: Path, folder: Path, n: int) -> Path:
    """``n`` frames: the test images again and again, as hard links."""
    sources = sorted((data / "test").rglob("*.png"))
    folder.mkdir()
    for i in range(n):
        os.link(sources[i % len(sources)], folder / f"{i:06d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="train,tune,predict")
    parser.add_argument("--storage", default=os.environ.get("AOIFLOW_TEST_PG_URL"))
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    from aoiflow.synth import make_surface_dataset

    parts = args.parts.split(",")
    print(f"{os.cpu_count()} CPU cores; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="scale_out_") as tmp:
        root = Path(tmp)
        data = root / "surfaces"
        make_surface_dataset(data, n_train=args.train_images, n_test_good=10, n_per_defect=5)
        if "train" in parts:
            bench_train(root, data)
        if "tune" in parts:
            if args.storage:
                bench_tune(root, data, args.storage)
            else:
                print("  tune: skipped (no --storage and no $AOIFLOW_TEST_PG_URL)")
        if "predict" in parts:
            bench_predict(root, data, args.images)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
