"""Export the supervised defect-kind model as one ONNX graph (image -> class probabilities), or
as OpenVINO IR converted from it.

The graph takes (B, C, S, S) images in [0, 1] (dynamic batch B, the model's size S) and returns
probabilities (B, K+1, S, S), background first, softmax included. Its metadata (key
``aoiflow-supervised``) carries the class names, channels, image size, the region settings
(``infer``) and the version of the model it was exported from, so the .onnx file alone gives the
same regions and two-stage verdicts as SUP/; the IR carries the same metadata in its rt_info.
``ExportedSupervised`` (ONNX Runtime) and ``OpenVinoSupervised`` have ``SupervisedModel``'s
inference interface, and ``load_supervised`` picks the one a path needs (``Inspector.load``'s
``supervised=`` takes any). ONNX Runtime is the optional ``aoiflow[export]`` dependency, OpenVINO
``aoiflow[openvino]``.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aoiflow.data import resize_tensor, to_model_input
from aoiflow.export import METADATA_KEY as GANOMALY_METADATA_KEY
from aoiflow.export import (ExportError, _require_onnx, onnx_to_openvino, open_openvino, open_session,
                            openvino_metadata)
from aoiflow.fileio import atomic_write, file_digest
from aoiflow.supervised.config import SupervisedConfig
from aoiflow.supervised.model import SupervisedModel, check_images
from aoiflow.supervised.verdict import class_regions, region_dicts, two_stage_verdict

METADATA_KEY = "aoiflow-supervised"
EXPORT_FORMAT = "aoiflow-supervised-onnx/1"
INPUT, OUTPUT = "image", "probs"


class _Probabilities(nn.Module):
    """SupervisedModel with the softmax inside: (B, C, S, S) in [0, 1] -> (B, K+1, S, S)."""

    def __init__(self, model: SupervisedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), 1)


def _metadata(model: SupervisedModel) -> str:
    return json.dumps({
        "format": EXPORT_FORMAT, "class_names": list(model.class_names), "channels": model.channels,
        "image_size": model.image_size, "infer": model.config.infer.model_dump(),
        "config": model.config.model_dump(), "version": model.version,
        "outputs": {OUTPUT: "probabilities (B, K+1, S, S): background, then class_names"},
    })


def export_supervised_onnx(sup_dir: str | Path, out_path: str | Path) -> Path:
    """Write the model in ``sup_dir`` (SUP/ of ``aoiflow supervise train``, or its model.pt) as
    ONNX at ``out_path`` (written atomically; its folder is made). Returns the path.

    Raises SupervisedError for a folder without a usable model, ExportError when ONNX is missing
    or the export fails."""
    _require_onnx()
    import onnx

    model = SupervisedModel.load(sup_dir)
    graph = _Probabilities(model).eval()
    s = model.image_size
    example = (torch.rand(2, model.channels, s, s, generator=torch.Generator().manual_seed(0)),)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, example, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False)
        proto = program.model_proto
        onnx.checker.check_model(proto)
    except Exception as exc:  # the exporter raises many types; say which model failed
        raise ExportError(f"{sup_dir}: ONNX export of the supervised model failed ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'})") from None
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=_metadata(model))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: onnx.save(proto, str(p)))
    return out


def export_supervised_openvino(sup_dir: str | Path, out_xml: str | Path) -> Path:
    """Write the model in ``sup_dir`` as OpenVINO IR at ``out_xml`` (``.xml`` + ``.bin``, fp32),
    converted from its ONNX export, the same metadata in the IR's rt_info. Returns the .xml path.

    Raises as ``export_supervised_onnx``, and ExportError naming a path that is not ``.xml`` or
    when OpenVINO is missing."""
    return onnx_to_openvino(out_xml, lambda p: export_supervised_onnx(sup_dir, p), METADATA_KEY, [OUTPUT])


class _ExportedKind(ABC):
    """An exported supervised model with ``SupervisedModel``'s inference interface: ``infer``,
    ``infer_image``, ``predict_regions``, ``verdict``, ``class_names``, ``channels``,
    ``image_size``, ``config`` (model and infer settings) and ``version`` (that of the model it was
    exported from, ``<folder>@<digest>``; ``file_version`` names the exported file). Subclasses
    open the file with their runtime, pass its metadata to ``_read_metadata`` and run ``_run``."""

    path: Path

    def _read_metadata(self, text: str | None, ganomaly: bool) -> None:
        """Classes, channels, settings and version from the metadata text (None: the file has none;
        ``ganomaly``: it carries a GANomaly scoring graph's metadata instead)."""
        if text is None:
            what = ("a GANomaly scoring graph (`aoiflow export`), not a defect-kind model"
                    if ganomaly else "no aoiflow supervised metadata")
            raise ExportError(f"{self.path}: {what}; export one with "
                              f"`aoiflow supervise export SUP OUT{self.path.suffix}`")
        try:
            info = json.loads(text)
            if info.get("format") != EXPORT_FORMAT:
                raise ValueError(f"format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
            self.config = SupervisedConfig.model_validate(info["config"])
            self.class_names = [str(n) for n in info["class_names"]]
            self.channels = int(info["channels"])
            self.version = str(info["version"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExportError(f"{self.path}: damaged aoiflow supervised metadata ({exc})") from None
        self.file_version = f"{self.path.stem}@{file_digest(self.path)}"

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """(b, C, S, S) float32 in [0, 1] -> probabilities (b, K+1, S, S), by the runtime."""

    @property
    def image_size(self) -> int:
        return self.config.model.image_size

    def _check(self, x: torch.Tensor) -> None:
        check_images(x, self.channels)

    def infer(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> class probabilities (B, K+1, S, S), as ``SupervisedModel.infer``
        (images of another size are resized to S first)."""
        self._check(x)
        x = resize_tensor(torch.as_tensor(x).float(), self.image_size)
        out = [torch.from_numpy(self._run(np.ascontiguousarray(x[i:i + batch_size].numpy(), dtype=np.float32)))
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else x.new_zeros(0, len(self.class_names) + 1, *x.shape[-2:])

    def infer_image(self, image: np.ndarray) -> np.ndarray:
        """One image (H, W, C) float in [0, 1] (``data.read_image``) -> probabilities (K+1, S, S)."""
        x = to_model_input(image, self.channels, self.image_size)[None]
        return self.infer(x)[0].numpy()

    def predict_regions(self, probs: np.ndarray | torch.Tensor, original_size: tuple[int, int] | None = None,
                        polygons: bool = False) -> list[dict]:
        """As ``SupervisedModel.predict_regions``."""
        ic = self.config.infer
        labels, regions = class_regions(probs, ic.min_region_area, ic.min_confidence)
        return region_dicts(regions, self.class_names, labels, original_size, polygons)

    def verdict(self, decision: str, anomaly_map: np.ndarray, pixel_threshold: float | None,
                probs: np.ndarray | torch.Tensor,
                min_cover: float = 0.5) -> tuple[str, str | None, float | None, list[dict]]:
        """As ``SupervisedModel.verdict``: ``verdict.two_stage_verdict`` with this model's classes
        and ``infer`` settings."""
        ic = self.config.infer
        return two_stage_verdict(decision, anomaly_map, pixel_threshold, probs, self.class_names, ic.min_confidence,
                                 min_cover, min_area=ic.min_region_area)


class ExportedSupervised(_ExportedKind):
    """A supervised model exported as ONNX (``export_supervised_onnx``), run by ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads, "exported supervised model")
        meta = self.session.get_modelmeta().custom_metadata_map
        self._read_metadata(meta.get(METADATA_KEY), GANOMALY_METADATA_KEY in meta)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: batch})[0]


class OpenVinoSupervised(_ExportedKind):
    """A supervised model exported as OpenVINO IR (``export_supervised_openvino``), run on the CPU
    plugin; ``precision`` 'f32' (exact) or 'bf16' where the CPU has it (faster, not exact)."""

    def __init__(self, path: str | Path, threads: int = 2, precision: str = "f32") -> None:
        self.path = Path(path)
        model, self.request = open_openvino(self.path, threads, precision, "exported supervised model")
        self._read_metadata(openvino_metadata(model, METADATA_KEY),
                            openvino_metadata(model, GANOMALY_METADATA_KEY) is not None)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[0])  # a copy: the request reuses its output buffer


def load_supervised(path: str | Path, threads: int = 2,
                    precision: str = "f32") -> SupervisedModel | ExportedSupervised | OpenVinoSupervised:
    """The supervised model at ``path``: ``ExportedSupervised`` for a ``.onnx`` file,
    ``OpenVinoSupervised`` for a ``.xml`` one (``precision`` applies to it), else
    ``SupervisedModel.load`` (a SUP/ folder or its model.pt)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ExportedSupervised(path, threads)
    if suffix == ".xml":
        return OpenVinoSupervised(path, threads, precision)
    return SupervisedModel.load(path)
