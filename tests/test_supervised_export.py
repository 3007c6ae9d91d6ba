"""The supervised defect-kind model exported to ONNX and OpenVINO: the same probabilities as torch,
the same two-stage verdicts through ``Inspector``, metadata enough to run from the file alone,
clear refusals of files that are not such a model."""

import csv
import json
from pathlib import Path

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


def _test_images(tile: Path) -> list[Path]:
    return sorted(p for p in (tile / "test").rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES)


def _assert_same_verdicts(with_folder: list, with_file: list) -> None:
    assert len(with_file) == len(with_folder) == 10
    for a, b in zip(with_folder, with_file, strict=True):
        assert (a.status, a.decision, a.verdict, a.kind) == (b.status, b.decision, b.verdict, b.kind)
        assert [r["kind"] for r in a.regions] == [r["kind"] for r in b.regions]
        if a.confidence is not None:
            assert abs(a.confidence - b.confidence) < 1e-4


def test_inspector_with_the_exported_model_gives_the_folders_verdicts(models, module_tile_subset):
    run, sup, path = models
    paths = _test_images(module_tile_subset)
    folder = Inspector.load(run, supervised=sup)
    inspector = Inspector.load(run, supervised=path)
    assert isinstance(inspector.supervised, ExportedSupervised)
    assert inspector.supervised_version == folder.supervised_version  # the model it was exported from
    _assert_same_verdicts(list(folder.predict_files(paths)), list(inspector.predict_files(paths)))


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


# --- OpenVINO IR, converted from the ONNX export ----------------------------------------------

@pytest.fixture(scope="module")
def openvino_path(models):
    pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'aoiflow[openvino]')")
    from aoiflow.supervised.export import export_supervised_openvino

    _, sup, onnx_path = models
    return export_supervised_openvino(sup, onnx_path.parent / "ov" / "sup.xml")


def test_openvino_probabilities_and_metadata_match_torch(models, openvino_path):
    import onnx
    import openvino as ov

    from aoiflow.supervised.export import OpenVinoSupervised

    _, sup, onnx_path = models
    assert sorted(p.name for p in openvino_path.parent.iterdir()) == ["sup.bin", "sup.xml"]  # no temporary left
    onnx_meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[METADATA_KEY]
    assert ov.Core().read_model(str(openvino_path)).get_rt_info([METADATA_KEY]).astype(str) == onnx_meta
    torch_model, exported = SupervisedModel.load(sup), OpenVinoSupervised(openvino_path, threads=1)
    assert (exported.class_names, exported.channels, exported.image_size, exported.config, exported.version) == (
        torch_model.class_names, torch_model.channels, 32, torch_model.config, torch_model.version)
    assert exported.file_version.startswith("sup@")
    gen = torch.Generator().manual_seed(2)
    for batch in (1, 3, 7):  # the batch stays dynamic through the conversion
        x = torch.rand(batch, torch_model.channels, 32, 32, generator=gen)
        got = exported.infer(x, batch_size=4)  # 7 runs as 4 + 3: the request's output buffer is reused
        assert got.shape == (batch, len(torch_model.class_names) + 1, 32, 32)
        assert torch.allclose(got, torch_model.infer(x), atol=1e-4)
    other_size = torch.rand(2, torch_model.channels, 50, 70, generator=gen)
    assert torch.allclose(exported.infer(other_size), torch_model.infer(other_size), atol=1e-4)
    image = torch.rand(45, 60, 1, generator=gen).numpy()
    assert np.allclose(exported.infer_image(image), torch_model.infer_image(image), atol=1e-4)
    probs = exported.infer(torch.rand(1, exported.channels, 32, 32, generator=gen))[0].numpy()
    assert exported.predict_regions(probs, (64, 64)) == torch_model.predict_regions(probs, (64, 64))


def test_inspector_and_predict_with_the_openvino_model_give_the_folders_verdicts(models, openvino_path,
                                                                                 module_tile_subset, tmp_path):
    from aoiflow.supervised.export import OpenVinoSupervised

    run, sup, _ = models
    paths = _test_images(module_tile_subset)
    assert isinstance(load_supervised(openvino_path), OpenVinoSupervised)
    folder = Inspector.load(run, supervised=sup)
    inspector = Inspector.load(run, supervised=openvino_path)
    assert isinstance(inspector.supervised, OpenVinoSupervised)
    assert inspector.supervised_version == folder.supervised_version
    with_folder = list(folder.predict_files(paths))
    _assert_same_verdicts(with_folder, list(inspector.predict_files(paths)))
    result = CliRunner().invoke(app, ["predict", str(run), str(module_tile_subset / "test"), "--out",
                                      str(tmp_path / "pred"), "--no-maps", "--supervised", str(openvino_path)])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        verdicts = {row["path"]: row["verdict"] for row in csv.DictReader(f)}
    assert verdicts == {str(p.path): p.verdict for p in with_folder}


def test_cli_exports_openvino_by_the_suffix(models, openvino_path, tmp_path):
    from aoiflow.supervised.export import OpenVinoSupervised

    _, sup, _ = models
    result = CliRunner().invoke(app, ["supervise", "export", str(sup), str(tmp_path / "cli.xml")])
    assert result.exit_code == 0, result.output
    assert "exported ->" in result.output and (tmp_path / "cli.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.bin", "cli.xml"]
    assert OpenVinoSupervised(tmp_path / "cli.xml").class_names == ["blowhole", "crack"]


def test_openvino_refusals_name_the_file(models, openvino_path, tmp_path):
    from aoiflow.export import OpenVinoModel, export_openvino
    from aoiflow.supervised.export import OpenVinoSupervised, export_supervised_openvino

    run, sup, _ = models
    with pytest.raises(ExportError, match=r"sup\.onnx: an OpenVINO model is written as a \.xml file"):
        export_supervised_openvino(sup, tmp_path / "sup.onnx")
    with pytest.raises(SupervisedError, match="not a supervised defect model"):
        export_supervised_openvino(run / "checkpoint.pt", tmp_path / "x.xml")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary folder left
    with pytest.raises(ExportError, match=r"none\.xml: exported supervised model not found"):
        load_supervised(tmp_path / "none.xml")
    (tmp_path / "junk.xml").write_text("<net></net>")
    with pytest.raises(ExportError, match=r"junk\.xml: not an aoiflow OpenVINO model"):
        OpenVinoSupervised(tmp_path / "junk.xml")
    ganomaly = export_openvino(run, tmp_path / "ganomaly.xml")
    with pytest.raises(ExportError, match=r"ganomaly\.xml: a GANomaly scoring graph.*supervise export SUP OUT\.xml"):
        Inspector.load(run, supervised=ganomaly)
    with pytest.raises(ExportError, match=r"sup\.xml: not an aoiflow OpenVINO model \(no aoiflow metadata\)"):
        OpenVinoModel(openvino_path)  # and the other way round: a kind model is no scoring graph
