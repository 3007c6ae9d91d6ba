"""Export a trained run as one ONNX scoring graph (image -> R, L, A, anomaly map), optionally int8.

The graph computes the SSIM or L1 map and the normalised score inside ONNX, and carries the
settings, channels and calibration (normalisation statistics and threshold) in its metadata, so
the .onnx file alone is enough to score images. ONNX Runtime is an optional dependency
(``pip install aoiflow[export]``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from aoiflow import data
from aoiflow.config import Config
from aoiflow.fileio import atomic_write
from aoiflow.calibrate import Calibration
from aoiflow.runs import RunError, TrainedModel
from aoiflow.scoring import ScoringGraph

if TYPE_CHECKING:
    import openvino

METADATA_KEY = "aoiflow"
OUTPUTS = ["R", "L", "A", "map"]


class ExportError(RuntimeError):
    """Export failed or an exported model cannot be used; the message says why."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime: pip install 'aoiflow[export]' ({exc})") from None


def _metadata(model: TrainedModel, int8: bool) -> str:
    return json.dumps({
        "format": 1, "config": model.config.model_dump(), "channels": model.channels,
        "calibration": model.calibration.to_dict(), "epoch": model.epoch, "int8": int8,
    })


def _export_fp32(model: TrainedModel, path: Path) -> None:
    import onnx

    graph = ScoringGraph(model.generator, model.config.scoring, model.calibration, model.map_stats, model.head).eval()
    s = model.config.model.input_size
    example = (torch.rand(2, model.channels, s, s),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, example, input_names=["image"], output_names=OUTPUTS,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    atomic_write(path, lambda p: onnx.save(proto, p))


class _NormalsReader:
    """Feeds training normals to ONNX Runtime's int8 calibration, a few images at a time."""

    def __init__(self, images: torch.Tensor, batch: int = 8) -> None:
        self.batches = [images[i : i + batch].numpy() for i in range(0, len(images), batch)]

    def get_next(self):
        return {"image": self.batches.pop(0)} if self.batches else None


def _generator_convolutions(model_path: Path) -> list[str]:
    """Names of the generator's (transposed) convolutions: their weights are the ``generator.*``
    initialisers. The SSIM and smoothing blurs are convolutions too, but must stay fp32."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node
            if n.op_type in ("Conv", "ConvTranspose") and n.input[1].startswith("generator.")]


def _quantise(fp32: Path, out: Path, normals: torch.Tensor) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    # Only the generator is quantised: SSIM's local variance (E[x^2] - mu^2) cancels badly at low
    # precision (in bf16 it drops SSIM-SSIM to chance), so its blurs and the map smoothing stay fp32.
    def write(p: Path) -> None:
        prepared = p.with_name(p.name + ".prep.onnx")
        try:
            # Shape inference and graph clean-up first, as ONNX Runtime recommends before quantising.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(p), _NormalsReader(normals), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            nodes_to_quantize=_generator_convolutions(prepared),
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            prepared.unlink(missing_ok=True)

    atomic_write(out, write)


def _set_metadata(path: Path, text: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=text)
    atomic_write(path, lambda p: onnx.save(proto, str(p)))


def export_onnx(run_dir: str | Path, out_path: str | Path, int8: bool = False,
                data_root: str | Path | None = None, calibration_images: int = 64) -> Path:
    """Write the run's scoring graph as ONNX (fp32, or int8 calibrated on training normals).

    int8 calibration reads the run's training normals from ``data_root`` (default: the folder the
    run was trained on, as stored in the checkpoint).
    """
    _require_onnx()
    model = TrainedModel.load(run_dir)
    if model.calibration is None:
        raise RunError(f"{run_dir}: the run has no calibration (training did not finish); resume it first")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not int8:
        _export_fp32(model, out)
    else:
        if not (data_root or model.data_root):
            raise RunError(f"{run_dir}: the run does not record its training folder; pass --data DATA for int8 calibration")
        root = Path(data_root or model.data_root)
        paths = [root / p for p in model.split["train"][:calibration_images]]
        normals = data.load_images(paths, model.channels, model.config.model.input_size).images
        if len(normals) == 0:
            raise data.DataLayoutError(f"{root}: int8 calibration needs the run's training images; pass --data DATA")
        tmp = out.with_name(out.stem + ".fp32.tmp.onnx")
        try:
            _export_fp32(model, tmp)
            _quantise(tmp, out, normals)
        finally:
            tmp.unlink(missing_ok=True)
    _set_metadata(out, _metadata(model, int8))
    return out


def open_session(path: Path, threads: int, what: str = "exported model"):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads; ExportError
    naming the file when it is missing or not a usable ONNX model."""
    _require_onnx()
    import onnxruntime as ort

    if not path.is_file():
        raise ExportError(f"{path}: {what} not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a usable ONNX model ({first})") from None


class ExportedModel:
    """An exported .onnx scoring graph with its settings and calibration, run by ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise ExportError(f"{self.path}: no aoiflow metadata; export it with `aoiflow export`")
        self._read_metadata(meta)

    def _read_metadata(self, text: str) -> None:
        """Settings, channels and calibration written by ``_metadata`` at export time."""
        info = json.loads(text)
        self.config = Config.model_validate(info["config"])
        self.channels = int(info["channels"])
        self.calibration = Calibration.from_dict(info["calibration"])
        self.int8 = bool(info["int8"])

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(B, C, S, S) float32 in [0, 1] -> R (B,), L (B,), A (B,), map (B, 1, S, S)."""
        r, l, a, amap = self.session.run(OUTPUTS, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return r, l, a, amap


def _require_openvino(what: str) -> ModuleType:
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError(f"{what} needs openvino: pip install 'aoiflow[openvino]' ({exc})") from None
    return ov


def onnx_to_openvino(out_xml: str | Path, write_onnx: Callable[[Path], object], key: str,
                     output_names: list[str]) -> Path:
    """Write OpenVINO IR (``.xml`` + ``.bin``) at ``out_xml``, converted from the ONNX model that
    ``write_onnx(path)`` writes, its metadata ``key`` copied into the IR's rt_info (the converter
    drops ONNX metadata). Both files are written in a hidden folder beside ``out_xml`` and moved
    into place, the .xml last; the folder (with the temporary ONNX) is always removed."""
    ov = _require_openvino("OpenVINO export")
    out = Path(out_xml)
    if out.suffix.lower() != ".xml":
        raise ExportError(f"{out}: an OpenVINO model is written as a .xml file (with its .bin beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".tmp", dir=out.parent))
    try:
        onnx_path = work / "model.onnx"
        write_onnx(onnx_path)
        import onnx

        text = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[key]
        model = ov.convert_model(str(onnx_path))
        model.set_rt_info(text, [key])
        for output, name in zip(model.outputs, output_names, strict=True):
            output.get_tensor().set_names({name})
        ov.save_model(model, str(work / out.name), compress_to_fp16=False)  # fp16 weights would not be exact
        os.replace(work / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        os.replace(work / out.name, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def export_openvino(run_dir: str | Path, out_xml: str | Path, int8: bool = False,
                    data_root: str | Path | None = None) -> Path:
    """Write the scoring graph as OpenVINO IR (``.xml`` + ``.bin``), converted from the ONNX export
    (int8 keeps its quantised convolutions); the same metadata travels in the IR's rt_info."""
    return onnx_to_openvino(out_xml, lambda p: export_onnx(run_dir, p, int8=int8, data_root=data_root),
                            METADATA_KEY, OUTPUTS)


def open_openvino(path: str | Path, threads: int, precision: str = "f32",
                  what: str = "exported model") -> tuple[openvino.Model, openvino.InferRequest]:
    """An OpenVINO IR model read from ``path`` and its infer request compiled for the CPU plugin
    (``threads`` threads, ``precision`` 'f32' or 'bf16'); ExportError naming the file when it is
    missing or not a readable IR."""
    ov = _require_openvino("running an OpenVINO model")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: {what} not found")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError for any unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not an aoiflow OpenVINO model ({first})") from None
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                "INFERENCE_PRECISION_HINT": precision})
    return model, compiled.create_infer_request()


def openvino_metadata(model: openvino.Model, key: str) -> str | None:
    """The text stored under ``key`` in an IR model's rt_info, None when it has none."""
    return model.get_rt_info([key]).astype(str) if model.has_rt_info([key]) else None


class OpenVinoModel(ExportedModel):
    """An OpenVINO IR scoring graph written by ``export_openvino``, run on the CPU plugin."""

    def __init__(self, path: str | Path, threads: int = 2, precision: str = "f32") -> None:
        """``precision``: 'f32' (exact), or 'bf16' where the CPU has it (faster, not exact)."""
        self.path = Path(path)
        model, self.request = open_openvino(self.path, threads, precision)
        meta = openvino_metadata(model, METADATA_KEY)
        if meta is None:
            raise ExportError(f"{self.path}: not an aoiflow OpenVINO model (no aoiflow metadata); "
                              "export it with `aoiflow export --format openvino`")
        self._read_metadata(meta)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        r, l, a, amap = (np.array(out[i]) for i in range(4))
        return r, l, a, amap
