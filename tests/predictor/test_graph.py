"""Loading models: every kind of bad file is one clear InvalidModelError."""
from __future__ import annotations

import onnx
import pytest

from predictor.errors import InvalidModelError
from predictor.kernels.keys import extract_kernels
from predictor.model.graph import load_model, parse_input_shapes
from predictor.runtime.optimizer import local_runtime
from tests import factories


def test_loads_a_valid_model_from_path_and_bytes(tmp_path) -> None:
    model = factories.gemm_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert load_model(path).graph.node[0].name == "fc"
    assert load_model(path.read_bytes()).graph.node[0].name == "fc"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty file"),
        (b"this is not a protobuf at all \xff\xfe", "not an ONNX model"),
        (b"PK\x03\x04" + b"\x00" * 64, "not an ONNX model"),
    ],
)
def test_rejects_garbage(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        load_model(payload)


def test_rejects_truncated_protobuf() -> None:
    data = factories.conv_bn_relu_model().SerializeToString()
    for cut in (10, len(data) // 3, len(data) - 7):
        with pytest.raises(InvalidModelError):
            load_model(data[:cut])


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InvalidModelError, match="no such file"):
        load_model(tmp_path / "absent.onnx")


def test_ir_version_the_runtime_cannot_load() -> None:
    model = factories.gemm_model()
    model.ir_version = 99
    with pytest.raises(InvalidModelError, match="IR version|invalid ONNX model"):
        extract_kernels(load_model(model.SerializeToString()), local_runtime(1))


def test_unknown_operator_is_an_invalid_model() -> None:
    model = factories.gemm_model()
    model.graph.node[0].op_type = "NoSuchOperator"
    with pytest.raises(InvalidModelError):
        extract_kernels(load_model(model.SerializeToString()), local_runtime(1))


def test_parse_input_shapes() -> None:
    assert parse_input_shapes(["input=1x3x224x224", "ids=4,128"]) == {"input": [1, 3, 224, 224], "ids": [4, 128]}
    with pytest.raises(InvalidModelError, match="bad --input-shape"):
        parse_input_shapes(["input=1xAx3"])
    with pytest.raises(InvalidModelError, match="positive"):
        parse_input_shapes(["input=0x3"])
