"""The supervised defect-kind model exported to ONNX: the same probabilities as torch, the same
two-stage verdicts through ``Inspector``, metadata enough to run from the file alone, clear
refusals of files that are not such a model."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install 'aoiflow[export]')")

from typer.testing import CliRunner  # noqa: E402

from aoiflow import data  # noqa: E402
from aoiflow.cli import app  # noqa: E402
from aoiflow.export import ExportError, export_onnx  # noqa: E402
from aoiflow.predict import Inspector  # noqa: E402
from aoiflow.supervised.config import build_supervised_config  # noqa: E402
from aoiflow.supervised.export import (METADATA_KEY, ExportedSupervised, export_supervised_onnx,  # noqa: E402
                                       load_supervised)
from aoiflow.supervised.model import SupervisedError, SupervisedModel  # noqa: E402
from aoiflow.supervised.train import fit_supervised  # noqa: E402
from aoiflow.train import fit  # noqa: E402


@pytest.fixture(scope="module")
def models(module_tile_subset, tmp_path_factory, module_tiny_config):
    root = tmp_path_factory.mktemp("sup_export")
    fit(module_tile_subset, root / "run", module_tiny_config, progress=False)
    config = build_supervised_config(overrides={"model": {"image_size": 32, "width": 4, "depth": 2},
                                                "train": {"steps": 30, "batch_size": 4, "threads": 1,
                                                          "eval_every": 15},
                                                "infer": {"min_confidence": 0.4}})
    fit_supervised(module_tile_subset, root / "sup", config, progress=False)
    onnx_path = export_supervised_onnx(root / "sup", root / "export" / "sup.onnx")
    return root / "run", root / "sup", onnx_path


def test_exported_probabilities_match_torch_for_any_batch(models):
    _, sup, path = models
    torch_model, exported = SupervisedModel.load(sup), ExportedSupervised(path, threads=1)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3, 7):  # the batch is dynamic
        x = torch.rand(batch, torch_model.channels, 32, 32, generator=gen)
        expect, got = torch_model.infer(x), exported.infer(x)
        assert got.shape == (batch, len(torch_model.class_names) + 1, 32, 32)
        assert torch.allclose(got, expect, atol=1e-4)
        assert torch.allclose(got.sum(1), torch.ones(batch, 32, 32), atol=1e-5)
    other_size = torch.rand(2, torch_model.channels, 50, 70, generator=gen)  # resized to the model size first
    assert torch.allclose(exported.infer(other_size), torch_model.infer(other_size), atol=1e-4)
    image = torch.rand(45, 60, 1, generator=gen).numpy()
    assert np.allclose(exported.infer_image(image), torch_model.infer_image(image), atol=1e-4)


def test_the_metadata_carries_classes_channels_size_settings_and_version(models):
    import onnx

    _, sup, path = models
    torch_model, exported = SupervisedModel.load(sup), ExportedSupervised(path)
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])
    assert meta["class_names"] == torch_model.class_names == exported.class_names == ["blowhole", "crack"]
    assert meta["channels"] == exported.channels == torch_model.channels
    assert meta["image_size"] == exported.image_size == 32
    assert meta["infer"] == {"min_region_area": 4.0, "min_confidence": 0.4}
    assert exported.config.infer == torch_model.config.infer
    assert exported.version == torch_model.version and exported.version.startswith("sup@")
    assert exported.file_version.startswith("sup@")
    probs = exported.infer(torch.rand(1, exported.channels, 32, 32))[0].numpy()
    assert exported.predict_regions(probs, (64, 64)) == torch_model.predict_regions(probs, (64, 64))


def test_inspector_with_the_exported_model_gives_the_folders_verdicts(models, module_tile_subset):
    run, sup, path = models
    paths = sorted(p for p in (module_tile_subset / "test").rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES)
    folder = Inspector.load(run, supervised=sup)
    with_folder = list(folder.predict_files(paths))
    inspector = Inspector.load(run, supervised=path)
    assert isinstance(inspector.supervised, ExportedSupervised)
    assert inspector.supervised_version == folder.supervised_version  # the model it was exported from
    with_file = list(inspector.predict_files(paths))
    assert len(with_file) == len(with_folder) == 10
    for a, b in zip(with_folder, with_file, strict=True):
        assert (a.status, a.decision, a.verdict, a.kind) == (b.status, b.decision, b.verdict, b.kind)
        assert [r["kind"] for r in a.regions] == [r["kind"] for r in b.regions]
        if a.confidence is not None:
            assert abs(a.confidence - b.confidence) < 1e-4


def test_load_supervised_picks_the_reader_by_path(models):
    _, sup, path = models
    assert isinstance(load_supervised(sup), SupervisedModel)
    assert isinstance(load_supervised(sup / "model.pt"), SupervisedModel)
    assert isinstance(load_supervised(path), ExportedSupervised)


def test_files_that_are_not_an_exported_supervised_model_are_refused(models, tmp_path):
    run, _, _ = models
    with pytest.raises(ExportError, match="exported supervised model not found"):
        ExportedSupervised(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    with pytest.raises(ExportError, match="junk.onnx: not a usable ONNX model"):
        load_supervised(junk)
    ganomaly = export_onnx(run, tmp_path / "ganomaly.onnx")
    with pytest.raises(ExportError, match="GANomaly scoring graph.*aoiflow supervise export"):
        Inspector.load(run, supervised=ganomaly)
    with pytest.raises(SupervisedError, match="not a supervised defect model"):
        export_supervised_onnx(run / "checkpoint.pt", tmp_path / "x.onnx")
    with pytest.raises(SupervisedError, match="supervised model not found"):
        export_supervised_onnx(tmp_path / "nothing", tmp_path / "x.onnx")


def test_cli_exports_and_names_problems(models, tmp_path):
    run, sup, _ = models
    runner = CliRunner()
    result = runner.invoke(app, ["supervise", "export", str(sup), str(tmp_path / "cli.onnx")])
    assert result.exit_code == 0, result.output
    assert "exported ->" in result.output and (tmp_path / "cli.onnx").is_file()
    assert ExportedSupervised(tmp_path / "cli.onnx").class_names == ["blowhole", "crack"]
    bad = runner.invoke(app, ["supervise", "export", str(run), str(tmp_path / "bad.onnx")])
    assert bad.exit_code == 2 and "error:" in bad.output and not (tmp_path / "bad.onnx").exists()
    wrong = runner.invoke(app, ["supervise", "export", str(sup), str(tmp_path / "model.pt")])
    assert wrong.exit_code == 2 and ".onnx" in wrong.output
