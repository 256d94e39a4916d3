"""Fuzzing the ONNX entry point with mutations of valid models: load and extract, or a LatpredError.

Mutations are byte-level (bit flips, truncations, inserted or overwritten garbage) and field-level
(wrong, negative or absurd dims, missing initializers, attributes of the wrong type, unknown ops and
domains, dangling inputs, bad opsets and element types). The seed and counts are fixed, so a failure
names a mutation that reproduces. The same mutants go through the REST upload: 201/200 or 422, never
a 5xx, and a rejected model leaves no file and no row behind.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import AttributeProto, TensorProto, helper

from predictor.errors import LatpredError
from predictor.kernels.keys import extract_kernels
from predictor.model.graph import load_model
from predictor.runtime.optimizer import local_runtime
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN, kept_models

logger = logging.getLogger(__name__)

SEED = 20261122
BYTE_MUTANTS = 500
FIELD_MUTANTS = 300
UPLOADED_MUTANTS = 120


def _seed_models() -> dict[str, onnx.ModelProto]:
    """Small versions of the factory models: short protobufs, so mutations hit structure more often."""
    return {
        "conv_bn_relu": factories.conv_bn_relu_model(channels=8, size=8, cin=4),
        "depthwise": factories.depthwise_model(channels=8, size=8),
        "residual": factories.residual_model(channels=8, size=8),
        "gemm": factories.gemm_model(k=16, n=8),
        "matmul_gelu": factories.matmul_add_gelu_model(tokens=4, dim=8, hidden=16),
        "layernorm": factories.layernorm_model(tokens=4, dim=8),
        "attention": factories.attention_model(tokens=4, dim=8, heads=2),
        "qdq_conv": factories.qdq_conv_model(cin=4, cout=8, size=8),
    }


@dataclass(frozen=True)
class Mutant:
    label: str
    data: bytes


# --- byte-level mutations ----------------------------------------------------------------------------


def _flip_bits(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    mutated = bytearray(data)
    positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))]
    for position in positions:
        mutated[position] ^= 1 << rng.randrange(8)
    return f"bit flips at {positions}", bytes(mutated)


def _truncate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    cut = rng.randrange(len(data))
    return f"truncated to {cut} of {len(data)} bytes", data[:cut]


def _insert_garbage(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    position = rng.randrange(len(data))
    garbage = rng.randbytes(rng.randint(1, 64))
    return f"{len(garbage)} garbage bytes inserted at {position}", data[:position] + garbage + data[position:]


def _overwrite_span(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    start = rng.randrange(len(data))
    length = rng.randint(1, 32)
    return f"{length} bytes overwritten at {start}", data[:start] + rng.randbytes(length) + data[start + length:]


def _duplicate_span(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    start = rng.randrange(len(data))
    span = data[start:start + rng.randint(1, 256)]
    return f"{len(span)} bytes at {start} repeated", data[:start] + span + data[start:]


_BYTE_MUTATIONS: list[Callable[[random.Random, bytes], tuple[str, bytes]]] = [
    _flip_bits, _truncate, _insert_garbage, _overwrite_span, _duplicate_span,
]


# --- field-level mutations (on a copy of the model) --------------------------------------------------


def _wrong_initializer_dims(rng: random.Random, model: onnx.ModelProto) -> str:
    init = rng.choice(model.graph.initializer)
    if not init.dims:
        init.dims.append(rng.choice([2, 3]))
        return f"scalar initializer {init.name} given a dim"
    index = rng.randrange(len(init.dims))
    init.dims[index] = rng.choice([0, init.dims[index] + 1, init.dims[index] * 7, 2**31 - 1])
    return f"initializer {init.name} dim {index} set to {init.dims[index]}"


def _negative_dims(rng: random.Random, model: onnx.ModelProto) -> str:
    if rng.random() < 0.5 and any(init.dims for init in model.graph.initializer):
        init = rng.choice([init for init in model.graph.initializer if init.dims])
        init.dims[0] = -rng.randint(1, 5)
        return f"initializer {init.name} dim 0 negative"
    value = model.graph.input[0]
    dim = rng.choice(value.type.tensor_type.shape.dim)
    dim.dim_value = -rng.randint(1, 5)
    return f"input {value.name} has a negative dim"


def _absurd_input_dims(rng: random.Random, model: onnx.ModelProto) -> str:
    value = model.graph.input[0]
    dims = value.type.tensor_type.shape.dim
    index = rng.randrange(len(dims))
    choice = rng.choice(["zero", "huge", "symbolic", "unset"])
    if choice == "zero":
        dims[index].dim_value = 0
    elif choice == "huge":
        dims[index].dim_value = 2**40
    elif choice == "symbolic":
        dims[index].dim_param = "batch"
    else:
        dims[index].Clear()
    return f"input {value.name} dim {index}: {choice}"


def _missing_initializer(rng: random.Random, model: onnx.ModelProto) -> str:
    index = rng.randrange(len(model.graph.initializer))
    name = model.graph.initializer[index].name
    del model.graph.initializer[index]
    return f"initializer {name} removed"


def _bad_attribute_type(rng: random.Random, model: onnx.ModelProto) -> str:
    nodes = [node for node in model.graph.node if node.attribute]
    if not nodes:
        node = rng.choice(model.graph.node)
        node.attribute.append(helper.make_attribute("axis", "not-an-int"))
        return f"node {node.name} given a string attribute axis"
    node = rng.choice(nodes)
    index = rng.randrange(len(node.attribute))
    name = node.attribute[index].name
    replacement = rng.choice([
        helper.make_attribute(name, "text"),
        helper.make_attribute(name, 3.5),
        helper.make_attribute(name, [1.5, 2.5]),
        helper.make_attribute(name, -(2**40)),
        helper.make_attribute(name, [0, -1, 2**40]),
    ])
    del node.attribute[index]
    node.attribute.append(replacement)
    return f"node {node.name} attribute {name} replaced by type {AttributeProto.AttributeType.Name(replacement.type)}"


def _unknown_op(rng: random.Random, model: onnx.ModelProto) -> str:
    node = rng.choice(model.graph.node)
    old = node.op_type
    if rng.random() < 0.5:
        node.op_type = "NotAnOp"
        return f"node {node.name}: {old} -> NotAnOp"
    node.domain = "com.example.custom"
    model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    return f"node {node.name}: {old} moved to a custom domain"


def _dangling_input(rng: random.Random, model: onnx.ModelProto) -> str:
    node = rng.choice(model.graph.node)
    node.input[rng.randrange(len(node.input))] = "nowhere"
    return f"node {node.name} reads an undefined tensor"


def _bad_opset_or_ir(rng: random.Random, model: onnx.ModelProto) -> str:
    choice = rng.choice(["opset 0", "opset 999", "opset 1", "ir 0", "ir 99", "no opset"])
    if choice == "no opset":
        del model.opset_import[:]
    elif choice.startswith("opset"):
        model.opset_import[0].version = int(choice.split()[1])
    else:
        model.ir_version = int(choice.split()[1])
    return choice


def _bad_elem_type(rng: random.Random, model: onnx.ModelProto) -> str:
    value = rng.choice([*model.graph.input, *model.graph.output])
    value.type.tensor_type.elem_type = rng.choice([0, TensorProto.STRING, TensorProto.BOOL, 999])
    return f"{value.name} elem_type {value.type.tensor_type.elem_type}"


def _initializer_data_mismatch(rng: random.Random, model: onnx.ModelProto) -> str:
    inits = [init for init in model.graph.initializer if init.raw_data]
    init = rng.choice(inits) if inits else rng.choice(model.graph.initializer)
    init.raw_data = init.raw_data[: len(init.raw_data) // 2] if init.raw_data else b"\x00\x01\x02"
    return f"initializer {init.name} raw data halved"


def _no_outputs(rng: random.Random, model: onnx.ModelProto) -> str:
    del model.graph.output[:]
    return "graph outputs removed"


def _duplicate_node_names_and_cycle(rng: random.Random, model: onnx.ModelProto) -> str:
    if len(model.graph.node) < 2:
        node = model.graph.node[0]
        node.input[0] = node.output[0]
        return f"node {node.name} reads its own output"
    first, last = model.graph.node[0], model.graph.node[-1]
    first.input[0] = last.output[0]
    return f"node {first.name} reads the last node's output (a cycle)"


_FIELD_MUTATIONS: list[Callable[[random.Random, onnx.ModelProto], str]] = [
    _wrong_initializer_dims, _negative_dims, _absurd_input_dims, _missing_initializer, _bad_attribute_type,
    _unknown_op, _dangling_input, _bad_opset_or_ir, _bad_elem_type, _initializer_data_mismatch, _no_outputs,
    _duplicate_node_names_and_cycle,
]


def make_mutants(seed: int = SEED) -> list[Mutant]:
    rng = random.Random(seed)
    models = _seed_models()
    names = sorted(models)
    mutants: list[Mutant] = []
    for _ in range(BYTE_MUTANTS):
        name = rng.choice(names)
        mutation = rng.choice(_BYTE_MUTATIONS)
        label, data = mutation(rng, models[name].SerializeToString())
        mutants.append(Mutant(f"{name}: {label}", data))
    for _ in range(FIELD_MUTANTS):
        name = rng.choice(names)
        model = onnx.ModelProto()
        model.CopyFrom(models[name])
        labels = [rng.choice(_FIELD_MUTATIONS)(rng, model) for _ in range(rng.choice([1, 1, 2]))]
        mutants.append(Mutant(f"{name}: {'; '.join(labels)}", model.SerializeToString()))
    return mutants


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    return make_mutants()


def test_every_seed_model_loads_and_extracts() -> None:
    """The mutations start from models the pipeline accepts (else the fuzzing proves nothing)."""
    runtime = local_runtime(1)
    for name, model in _seed_models().items():
        assert extract_kernels(load_model(model.SerializeToString()), runtime), name


@pytest.mark.timeout(180)
def test_mutants_load_and_extract_or_raise_latpred_errors(mutants: list[Mutant]) -> None:
    runtime = local_runtime(1)
    outcomes = {"extracted": 0, "rejected": 0}
    unexpected: list[str] = []
    for mutant in mutants:
        try:
            kernels = extract_kernels(load_model(mutant.data), runtime)
        except LatpredError as exc:
            outcomes["rejected"] += 1
            assert str(exc).strip(), f"{mutant.label}: empty error message"
        except Exception as exc:  # noqa: BLE001 - the point: any other type is the finding
            unexpected.append(f"{mutant.label}: {type(exc).__name__}: {exc}"[:400])
        else:
            outcomes["extracted"] += 1
            for kernel in kernels:
                assert kernel.key.key_hash, mutant.label
    logger.info("ONNX mutants: %s", outcomes)
    assert not unexpected, "errors other than LatpredError:\n" + "\n".join(unexpected)
    # Both branches must be exercised: a mutator that always breaks (or never breaks) the model is useless.
    assert outcomes["rejected"] >= len(mutants) // 4
    assert outcomes["extracted"] >= 5


@pytest.fixture
def upload_client(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'latpred.db'}",
                        api_tokens=TOKEN, read_token_required=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, settings


@pytest.mark.timeout(180)
def test_mutants_through_the_rest_upload(upload_client: tuple[TestClient, Settings], mutants: list[Mutant]) -> None:
    """201/200 for what loads, 422 for the rest; a rejected model leaves no file, temp file or row."""
    client, settings = upload_client
    picked = random.Random(SEED + 1).sample(mutants, UPLOADED_MUTANTS)
    accepted: set[str] = set()
    failures: list[str] = []
    for mutant in picked:
        response = client.post("/api/models", files={"file": ("fuzz.onnx", mutant.data)}, headers=AUTH)
        model_id = hashlib.sha256(mutant.data).hexdigest()
        if response.status_code in (200, 201):
            accepted.add(model_id)
            continue
        if response.status_code != 422 or not response.json().get("detail"):
            failures.append(f"{mutant.label}: {response.status_code} {response.text[:200]}")
            continue
        if model_id not in accepted and client.get(f"/api/models/{model_id}").status_code != 404:
            failures.append(f"{mutant.label}: rejected but readable")
    assert not failures, "\n".join(failures)
    assert sorted(kept_models(settings)) == sorted(accepted), "partial or orphan models left behind"
