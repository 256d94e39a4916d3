"""The measurement key schema (service.api.schemas.KernelKey) accepts every key the profilers really produce.

Keys come from the committed real exports (tests/data/real: both torch exporters, Hugging Face BERT and GPT-2,
onnxruntime's quantizers, torch-pruning), from those models compressed as profiling plans compress them, from the
profiler's priors (data/priors), and from TensorRT engine descriptions (tests/profiler/data); each must validate
and come back as the same key (same hash).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from predictor.compression.config import parse_config
from predictor.estimation.prepared import PreparedModel
from predictor.kernels.keys import ELEM_TYPE_NAMES, KernelKey, extract_kernels
from predictor.model.graph import load_model, set_input_shapes
from predictor.runtime.optimizer import local_runtime
from profiler.backends.tensorrt import _DATATYPE_WORDS, kernels_from_engine_info
from profiler.plan import DEFAULT_PRIORS_DIR
from profiler.skeleton import load_skeleton, materialize_skeleton
from service.api.schemas import KNOWN_DTYPES
from service.api.schemas import KernelKey as KernelKeySchema

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
TRT_DATA = Path(__file__).resolve().parents[1] / "profiler" / "data"
RUNTIME = local_runtime(1)
COMPRESSIONS = [{"default": {"bits": 8}}, {"default": {"bits": 8, "per_channel": False, "activation_type": "int8"}},
                {"default": {"bits": 8, "quantization": "dynamic"}}, {"default": {"bits": 4}},
                {"default": {"prune_ratio": 0.5}}, {"default": {"sparsity": 0.5}},
                {"default": {"sparsity_pattern": "2:4"}}, {"default": {"bits": 16}}]


def real_records() -> list[dict]:
    return list(json.loads((REAL / "manifest.json").read_text())["models"])


def real_model(record: dict) -> onnx.ModelProto:
    shapes = {name: [1 if isinstance(d, str) else d for d in dims] for name, dims in record["input_shapes"].items()}
    return set_input_shapes(load_model(REAL / record["file"]), shapes)


def assert_validates(key: KernelKey) -> None:
    document = json.loads(json.dumps(key.to_dict()))  # as it crosses the wire
    validated = KernelKeySchema.model_validate(document)
    again = KernelKey.from_dict(validated.model_dump())
    assert again == key and again.key_hash == key.key_hash, document


@pytest.mark.parametrize("record", real_records(), ids=lambda record: record["name"])
def test_every_kernel_key_of_the_real_exports_validates(record: dict) -> None:
    kernels = extract_kernels(real_model(record), RUNTIME)
    assert kernels
    for kernel in kernels:
        assert_validates(kernel.key)


@pytest.mark.parametrize("name", ["tiny_mobilenet_v2", "tiny_bert"])
def test_keys_of_compressed_real_exports_validate(name: str) -> None:
    """What a profiling plan measures: the model under static (per channel or tensor, uint8 or int8 activations)
    and dynamic int8, int4, pruning, sparsity (unstructured and 2:4) and fp16 configs."""
    record = next(r for r in real_records() if r["name"] == name)
    prepared = PreparedModel.create(real_model(record), RUNTIME)
    seen = 0
    for raw in COMPRESSIONS:
        for kernel in prepared.kernels(parse_config(raw)):
            assert_validates(kernel.key)
            seen += 1
    assert seen > 0


@pytest.mark.parametrize("prior", ["mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0", "resnet18_dynamo",
                                   "bert_small_dynamo", "distilbert_b4_s32"])
def test_keys_of_the_profilers_priors_validate(prior: str) -> None:
    """The models a profiling run starts from (data/priors skeletons of real exports), CNNs and transformers."""
    kernels = extract_kernels(materialize_skeleton(load_skeleton(DEFAULT_PRIORS_DIR / f"{prior}.json")), RUNTIME)
    assert kernels
    for kernel in kernels:
        assert_validates(kernel.key)


@pytest.mark.parametrize(("name", "precision"), [("trt_engine_resnet_block.json", "fp16"),
                                                 ("trt_engine_resnet_block.json", "fp32"),
                                                 ("trt_engine_int8_gemm.json", "int8")])
def test_tensorrt_engine_keys_validate(name: str, precision: str) -> None:
    kernels = kernels_from_engine_info(json.loads((TRT_DATA / name).read_text()), precision=precision)
    assert kernels
    for kernel in kernels:
        assert_validates(kernel.key)


def test_known_dtypes_cover_every_name_the_key_builders_write() -> None:
    assert set(ELEM_TYPE_NAMES.values()) <= KNOWN_DTYPES
    assert {dtype for dtype, _ in _DATATYPE_WORDS.values()} <= KNOWN_DTYPES
    # An element type predictor.kernels.keys has no name for is written as its number.
    assert str(onnx.TensorProto.FLOAT8E4M3FN) in KNOWN_DTYPES


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"inputs": [[1, -3]]}, "greater than or equal to 1"),
        ({"inputs": [[1, 0]]}, "greater than or equal to 1"),
        ({"outputs": [[2**63]]}, "less than or equal to 2147483647"),
        ({"weight": [1] * 10_000}, "at most 8 items"),
        ({"inputs": [[2**31 - 1] * 3]}, "impossible"),
        ({"inputs": [None] * 257}, "at most 256 items"),
        ({"dtype": "float33"}, "unknown dtype"),
        ({"dtype": "99999"}, "unknown dtype"),
        ({"op_type": "=HYPERLINK(\"http://x\")"}, "should match pattern"),
        ({"op_type": "x" * 65}, "at most 64 characters"),
        ({"attrs": {"a": [[1]]}}, "not a list in a list"),
        ({"attrs": {"a": {"b": 1}}}, "not dict"),
        ({"attrs": {"a": "x" * 257}}, "at most 256 characters"),
        ({"attrs": {"a": list(range(257))}}, "at most 256 items"),
        ({"attrs": {"a": 2**64}}, "outside int64"),
        ({"attrs": {"a": True}}, "not bool"),
        ({"attrs": {f"a{i}": 1 for i in range(65)}}, "at most 64 items"),
        ({"bits": 0}, "greater than or equal to 1"),
        ({"bits": 8.0}, "valid integer"),
        ({"sparsity": 1.5}, "less than or equal to 1"),
        ({"sparsity_pattern": "3:7"}, "'dense', 'unstructured' or '2:4'"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
    ids=["negative-dim", "zero-dim", "dim-past-int64", "rank-10000", "elements-past-2^62", "257-inputs",
         "unknown-dtype", "unknown-dtype-number", "formula-op-type", "long-op-type", "nested-attr-list",
         "object-attr", "long-attr-text", "long-attr-list", "attr-past-int64", "bool-attr", "65-attrs", "bits-0",
         "bits-float", "sparsity-1.5", "unknown-pattern", "unknown-field"],
)
def test_impossible_keys_are_refused(change: dict, fragment: str) -> None:
    key = KernelKey(op_type="Conv", inputs=((1, 16, 28, 28),), outputs=((1, 32, 28, 28),), weight=(32, 16, 3, 3),
                    attrs=(("kernel_shape", (3, 3)),)).to_dict()
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        KernelKeySchema.model_validate({**key, **change})
