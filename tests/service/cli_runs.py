"""Running the `latpred` CLI in this process as its console script does, and a store with a device to ask."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from predictor.compression.config import CompressionConfig
from predictor.estimation.prepared import PreparedModel
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.store import MeasurementIn, open_store, register_device, session_scope, start_run
from predictor.store import add_measurements as store_measurements
from service.cli import main
from service.settings import Settings


@dataclass(frozen=True)
class CliRun:
    status: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def run_latpred(capsys: pytest.CaptureFixture[str], *args: str) -> CliRun:
    """`latpred ARGS` through service.cli.main, the console script's entry point: its exit status and output."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    out, err = capsys.readouterr()
    code = ended.value.code
    return CliRun(code if isinstance(code, int) else (0 if code is None else 1), out, err)


def assert_one_line_error(run: CliRun, status: int, fragment: str) -> None:
    assert run.status == status, run
    assert len(run.error_lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert run.error_lines[0].startswith("latpred: error: ") and fragment in run.error_lines[0], run.stderr


def seed_device(home: Path, model: onnx.ModelProto, name: str = "cpu-seeded",
                configs: Iterable[CompressionConfig] = (), ms_per_kernel: float = 0.05) -> str:
    """A device of this host's runtime whose table holds the model's kernels (uncompressed and under `configs`) at
    made-up times, each kernel `ms_per_kernel` times its position: enough to predict with, in a second."""
    runtime = local_runtime(1)
    store = open_store(Settings(home=home))
    try:
        prepared = PreparedModel.create(model, runtime)
        keys = {k.key.key_hash: k.key for config in (CompressionConfig(), *configs) for k in prepared.kernels(config)}
        rows = [MeasurementIn(key=key.to_dict(), key_hash=key_hash, op_type=key.op_type, bits=key.bits,
                              median_ms=ms_per_kernel * (index + 1), p10_ms=ms_per_kernel * (index + 1) * 0.95,
                              p90_ms=ms_per_kernel * (index + 1) * 1.1, repeats=20)
                for index, (key_hash, key) in enumerate(sorted(keys.items()))]
        with session_scope(store.sessions) as session:
            device = register_device(session, name=name, backend=runtime.backend,
                                     execution_provider=runtime.execution_provider,
                                     runtime_version=runtime.runtime_version, threads=1, host=describe_host())
            start_run(session, device, "seed-run", None)
            store_measurements(session, device, "seed-run", rows)
    finally:
        store.close()
    return name
