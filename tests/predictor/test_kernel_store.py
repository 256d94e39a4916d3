"""Keys extracted from models are stored and found again, on SQLite and PostgreSQL alike."""
from __future__ import annotations

from sqlalchemy import Engine

from predictor.kernels.keys import KernelKey, extract_kernels
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.store import (
    MeasurementIn,
    add_measurements,
    iter_measurements,
    lookup_table,
    register_device,
    session_factory,
    session_scope,
)
from tests import factories

RUNTIME = local_runtime(1)
MODELS = [factories.conv_bn_relu_model, factories.depthwise_model, factories.residual_model, factories.gemm_model,
          factories.matmul_add_gelu_model, factories.layernorm_model, factories.attention_model,
          factories.qdq_conv_model]


def test_extracted_keys_round_trip_through_the_store(store_engine: Engine) -> None:
    kernels = [k for build in MODELS for k in extract_kernels(build(), RUNTIME)]
    rows = [
        MeasurementIn(key=k.key.to_dict(), key_hash=k.key.key_hash, op_type=k.op_type, bits=k.key.bits,
                      median_ms=0.01 * (i + 1), p10_ms=0.009 * (i + 1), p90_ms=0.012 * (i + 1), repeats=10)
        for i, k in enumerate(kernels)
    ]
    factory = session_factory(store_engine)
    with session_scope(factory) as session:
        device = register_device(session, name="cpu", backend=RUNTIME.backend,
                               execution_provider=RUNTIME.execution_provider,
                               runtime_version=RUNTIME.runtime_version, threads=1, host=describe_host())
        inserted = add_measurements(session, device, "run-1", rows)
    assert inserted == len({k.key.key_hash for k in kernels})
    with session_scope(factory) as session:
        table = lookup_table(session, device)
        stored = {m.key_hash: KernelKey.from_dict(m.key) for m in iter_measurements(session, device)}
    # Extracting the same models again (a user's query) finds every kernel in the table.
    again = [k for build in MODELS for k in extract_kernels(build(), RUNTIME)]
    assert all(k.key.key_hash in table for k in again)
    for k in again:
        assert stored[k.key.key_hash] == k.key
        assert stored[k.key.key_hash].key_hash == k.key.key_hash
