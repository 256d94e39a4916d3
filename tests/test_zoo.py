"""Smoke tests for tests/zoo.py (the synthetic graphs some tests use): a few small architectures build, validate
and run in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests import zoo

REQUIRED = {
    "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "mnasnet1_0", "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11", "densenet121",
    "regnet_x_400mf", "alexnet", "convnext_tiny", "vit_tiny", "vit_small", "vit_base_depth6",
}  # fmt: skip




def test_registry_has_required_architectures() -> None:
    assert REQUIRED <= set(zoo.ARCHITECTURES)
    with pytest.raises(KeyError):
        zoo.build_model("no_such_net")


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet18", 11_689_512), ("mobilenet_v2", 3_504_872), ("vit_tiny", 5_717_416)],
)
def test_build_check_and_run(name: str, params: int) -> None:
    batch, size, classes = 2, 64, 10
    model = zoo.build_model(name, batch=batch, image_size=size, num_classes=classes)

    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)

    # At the reference configuration (224, 1000 classes) the parameter count matches torchvision / timm.
    assert zoo.model_stats(zoo.build_model(name))[0] == params

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (batch, classes)
    assert np.isfinite(logits).all()


def test_cli_writes_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert zoo.main([str(tmp_path), "--names", "squeezenet1_1", "--image-size", "64"]) == 0
    model = onnx.load(tmp_path / "squeezenet1_1.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    assert "squeezenet1_1" in capsys.readouterr().out
