import csv

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install 'aoiflow[export]')")

from aoiflow.export import ExportedModel, ExportError, export_onnx  # noqa: E402
from aoiflow.predict import Inspector, predict_to_folder  # noqa: E402
from aoiflow.runs import TrainedModel  # noqa: E402
from aoiflow.scoring import ScoringGraph, combined_score, score_batch  # noqa: E402
from aoiflow.train import fit  # noqa: E402
from aoiflow import data  # noqa: E402


@pytest.fixture(scope="module")
def tile(module_tile_subset):
    return module_tile_subset


@pytest.fixture(scope="module")
def tile_run(tile, tmp_path_factory, module_tiny_config):
    run = tmp_path_factory.mktemp("export") / "run"
    fit(tile, run, module_tiny_config, progress=False)
    return run


def test_fp32_graph_matches_pytorch(tile_run, tmp_path):
    path = export_onnx(tile_run, tmp_path / "m.onnx")
    exported = ExportedModel(path)
    model = TrainedModel.load(tile_run)
    assert exported.channels == 1 and exported.calibration == model.calibration and exported.config == model.config
    x = torch.rand(5, 1, 32, 32)
    r, l, a, amap = exported.score(x.numpy())
    tr, tl, tmap, _ = score_batch(model.generator, x, model.config.scoring, model.map_stats)
    ta = combined_score(tr.numpy(), tl.numpy(), model.calibration, model.config.scoring.lam)
    np.testing.assert_allclose(r, tr.numpy(), atol=1e-5)
    np.testing.assert_allclose(l, tl.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a, ta, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(amap, tmap.numpy(), atol=1e-4)
    assert amap.shape == (5, 1, 32, 32)
    with torch.inference_mode():
        ga = ScoringGraph(model.generator, model.config.scoring, model.calibration, model.map_stats)(x)[2].numpy()
    np.testing.assert_allclose(ga, ta, rtol=1e-4, atol=1e-4)


def test_the_multiscale_map_exports_as_it_scores(tile, tmp_path, tiny_config):
    cfg = tiny_config
    cfg.scoring.score = "ssim_multiscale"
    fit(tile, tmp_path / "run", cfg, progress=False)
    exported = ExportedModel(export_onnx(tmp_path / "run", tmp_path / "m.onnx"))
    model = TrainedModel.load(tmp_path / "run")
    x = torch.rand(3, 1, 32, 32)
    _, _, _, amap = exported.score(x.numpy())
    _, _, tmap, _ = score_batch(model.generator, x, model.config.scoring, model.map_stats)
    assert model.config.scoring.score == "ssim_multiscale"
    np.testing.assert_allclose(amap, tmap.numpy(), atol=1e-4)


def test_int8_export_scores_close_to_fp32(tile, tmp_path, tiny_config):
    # L1 maps move linearly with reconstruction error, so they show quantisation error directly
    # (SSIM of a barely trained, nearly flat reconstruction amplifies any change).
    cfg = tiny_config
    cfg.scoring.score = "l1"
    fit(tile, tmp_path / "run", cfg, progress=False)
    fp32 = ExportedModel(export_onnx(tmp_path / "run", tmp_path / "m.onnx"))
    q = ExportedModel(export_onnx(tmp_path / "run", tmp_path / "q.onnx", int8=True))
    assert q.int8 and not fp32.int8
    import onnx

    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    generator = [n for n in convs if n.input[1] in dequantised]
    blurs = [n for n in convs if n.input[1] not in dequantised]
    assert len(generator) == 12 and len(blurs) >= 2  # 4 + 4 + 4 layers of a 32-px generator; blurs stay fp32
    paths = [s.path for s in data.test_samples(tile)]
    x = data.load_images(paths, 1, 32).images.numpy()
    r32, _, _, m32 = fp32.score(x)
    r8, _, _, m8 = q.score(x)
    assert np.corrcoef(m32.ravel(), m8.ravel())[0, 1] > 0.9
    np.testing.assert_allclose(r8, r32, rtol=0.2)


def test_predict_with_an_exported_model_matches_the_run(tile_run, tile, tmp_path):
    path = export_onnx(tile_run, tmp_path / "m.onnx")
    folder = tile / "test" / "crack"
    a = predict_to_folder(Inspector.load(tile_run), folder, tmp_path / "torch", progress=False)
    b = predict_to_folder(Inspector.load(path), folder, tmp_path / "onnx", progress=False)
    assert [p.decision for p in a] == [p.decision for p in b]
    np.testing.assert_allclose([p.a for p in a], [p.a for p in b], rtol=1e-3, atol=1e-3)
    rows = list(csv.DictReader((tmp_path / "onnx" / "predictions.csv").open()))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)


def test_unusable_exports_are_refused(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        ExportedModel(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    with pytest.raises(ExportError, match="not a usable ONNX model"):
        ExportedModel(junk)


def test_openvino_ir_matches_onnx(tile_run, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'aoiflow[openvino]')")
    from aoiflow.export import OpenVinoModel, export_openvino

    onnx_model = ExportedModel(export_onnx(tile_run, tmp_path / "m.onnx"))
    ov_model = OpenVinoModel(export_openvino(tile_run, tmp_path / "m.xml"))
    assert ov_model.calibration == onnx_model.calibration and ov_model.config == onnx_model.config
    x = torch.rand(3, 1, 32, 32).numpy()
    for a, b in zip(ov_model.score(x), onnx_model.score(x)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(ExportError, match=".xml"):
        export_openvino(tile_run, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="not an aoiflow OpenVINO model"):
        (tmp_path / "bad.xml").write_text("<net></net>")
        OpenVinoModel(tmp_path / "bad.xml")
