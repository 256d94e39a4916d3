"""What a device runs models with, and onnxruntime's own graph optimizer as the source of truth for fusion."""
from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import onnx

from predictor.allocator import release_free_memory, tune_allocator
from predictor.errors import InvalidModelError

__all__ = [
    "OptimizerLimits",
    "RuntimeSpec",
    "describe_host",
    "local_runtime",
    "nchwc_block_size",
    "nchwc_channel_alignment",
    "optimize_model",
    "optimizer_limits",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSpec:
    """The runtime half of a device: backend, its version, execution provider and thread setting."""

    backend: str = "onnxruntime"
    execution_provider: str = "CPUExecutionProvider"
    threads: int = 1
    runtime_version: str = ""
    # The runtime's graph transformers left out where kernels are built for a device whose runtime does not run
    # them (an ARM build has no NchwcTransformer): see predictor.runtime.devices.
    disabled_optimizers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        fields = asdict(self)
        fields["disabled_optimizers"] = list(self.disabled_optimizers)
        return fields

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RuntimeSpec:
        fields = dict(data)
        fields["disabled_optimizers"] = tuple(fields.get("disabled_optimizers") or ())  # type: ignore[call-overload]
        return cls(**fields)  # type: ignore[arg-type]


def local_runtime(threads: int = 1, execution_provider: str = "CPUExecutionProvider") -> RuntimeSpec:
    """The onnxruntime installed here, with the given thread count."""
    import onnxruntime

    return RuntimeSpec(
        backend="onnxruntime",
        execution_provider=execution_provider,
        threads=threads,
        runtime_version=onnxruntime.__version__,
    )


def describe_host() -> str:
    """A one-line description of this host's CPU (model name and core count)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _session_options(runtime: RuntimeSpec):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


_block_sizes: dict[tuple[str, str, str, tuple[str, ...]], int] = {}


def nchwc_block_size(runtime: RuntimeSpec) -> int:
    """Channel block of onnxruntime's NCHWc layout for this runtime on this CPU (8 with AVX2, 16 with AVX-512); 0
    if it runs none. A small conv is optimized once per runtime and its layout read off: the blocked conv's weight
    has its output channels padded to the block (an 8-channel conv is blocked with AVX-512 too, padded to 16)."""
    cache_key = _runtime_key(runtime)
    if cache_key not in _block_sizes:
        block = 0
        if runtime.backend == "onnxruntime":
            for channels in (8, 16):
                blocked = _blocked_weights(_probe_conv(channels), runtime)
                if blocked:
                    block = max(channels, blocked[0])
                    break
        _block_sizes[cache_key] = block
    return _block_sizes[cache_key]


def nchwc_channel_alignment(runtime: RuntimeSpec) -> int:
    """The multiple of channels that onnxruntime's NCHWc layout takes as they are, padding them to its block: the
    channels of a depthwise conv, and the input channels of a conv (one with fewer than a block reads its NCHW input
    directly). onnxruntime 1.32 on x86 takes multiples of 4, padding 28 channels to 32 on AVX-512; a runtime that
    takes whole blocks only gives its block. Read off depthwise convs optimized once per runtime; 0 without NCHWc."""
    cache_key = _runtime_key(runtime)
    if cache_key not in _alignments:
        block = nchwc_block_size(runtime)
        alignment = block
        channels = 2
        while channels < block:
            if _blocked_weights(_probe_conv(channels, depthwise=True), runtime):
                alignment = channels
                break
            channels *= 2
        _alignments[cache_key] = alignment
    return _alignments[cache_key]


_alignments: dict[tuple[str, str, str, tuple[str, ...]], int] = {}


def _runtime_key(runtime: RuntimeSpec) -> tuple[str, str, str, tuple[str, ...]]:
    return runtime.backend, runtime.execution_provider, runtime.runtime_version, runtime.disabled_optimizers


def _blocked_weights(model: onnx.ModelProto, runtime: RuntimeSpec) -> list[int]:
    """The output channels of each conv the runtime runs in its NCHWc layout (padded to its block)."""
    optimized = onnx.load_model_from_string(_optimize_bytes(model.SerializeToString(), runtime, "all"))
    weights = {init.name: list(init.dims) for init in optimized.graph.initializer}
    return [weights[node.input[1]][0] for node in optimized.graph.node
            if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv"
            and len(node.input) > 1 and node.input[1] in weights]


def _probe_conv(channels: int, depthwise: bool = False) -> onnx.ModelProto:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((channels, 1 if depthwise else channels, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="probe", pads=[1, 1, 1, 1],
                          group=channels if depthwise else 1)], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def translate_runtime_error(exc: Exception) -> InvalidModelError:
    """Turn an onnxruntime load failure into a one-line InvalidModelError."""
    text = str(exc)
    match = _IR_VERSION.search(text)
    if match:
        return InvalidModelError(
            f"the model's IR version {match.group(1)} is newer than this runtime supports "
            f"(max {match.group(2)}); re-export it with an older onnx or set model.ir_version"
        )
    if "opset" in text.lower():
        line = next((ln for ln in text.splitlines() if "opset" in ln.lower()), text)
        return InvalidModelError(f"the runtime cannot load this model's opset: {line.strip()[:300]}")
    last = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return InvalidModelError(f"the runtime cannot load this model: {last[:300]}")


_OPTIMIZATION_LEVELS = {"basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL"}


def optimize_model(
    model: onnx.ModelProto, runtime: RuntimeSpec, level: str = "all", limits: OptimizerLimits | None = None,
    weights: bool = True,
) -> onnx.ModelProto:
    """Run onnxruntime's graph optimizer for this runtime and return the graph it will execute.

    The optimizer decides fusion (Conv+BN+Relu, MatMul+Add, Gelu, attention), int8 QDQ folding and
    layout (NCHWc blocks, NHWC transposes); reading its output keeps latpred in step with the runtime.
    `level` "basic" stops at constant folding and BatchNorm fusion. With `limits` (or those of the
    enclosing `optimizer_limits` block, which the service sets for every request) the optimizer runs in
    a worker process, killed at the time limit; without, here (CLI and profiler, on the user's own models).
    `weights` False: the graph comes back without its weight matrices' data (their tensors keep names, shapes and
    types, marked external): what reading kernels needs, at a fraction of the bytes.
    """
    if runtime.backend != "onnxruntime":
        raise InvalidModelError(f"kernel extraction for backend {runtime.backend!r} needs its own extractor")
    if level not in _OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimization level {level!r}")
    limits = limits or _current_limits.get()
    data = model.SerializeToString()
    optimized = _optimize_bytes(data, runtime, level, weights) if limits is None else _workers().optimize(
        data, runtime, level, limits, weights)
    return onnx.load_model_from_string(optimized)


# Optimized graphs read without weights keep tensors up to this size in the graph (scales, zero points, shapes).
_INLINE_TENSOR_BYTES = 4096


def _optimize_bytes(data: bytes, runtime: RuntimeSpec, level: str, weights: bool = True) -> bytes:
    """The optimized model's bytes, in this process; InvalidModelError if the runtime cannot load it."""
    import onnxruntime as ort

    options = _session_options(runtime)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[level])
    with tempfile.TemporaryDirectory(prefix="latpred-opt-") as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized_path)
        if not weights:
            # Larger tensors go to a file beside it, which is never read: the graph holds their shapes and types.
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "weights.bin")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             str(_INLINE_TENSOR_BYTES))
        try:
            ort.InferenceSession(data, options, providers=[runtime.execution_provider],
                                 disabled_optimizers=list(runtime.disabled_optimizers) or None)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise translate_runtime_error(exc) from exc
        return optimized_path.read_bytes()


# ---------------------------------------------------------------- limits: the optimizer in a worker process
# An uploaded model is untrusted input to onnxruntime's optimizer (graph transformers can take very long or
# allocate a lot on crafted graphs). Under limits the optimizer runs in a spawned worker: killed at the time
# limit, its address space capped (RLIMIT_AS). Workers are started once and reused (no interpreter and
# onnxruntime import per call), one per concurrent call up to _MAX_WORKERS; a killed one is replaced on demand.


@dataclass(frozen=True)
class OptimizerLimits:
    """Bounds on one optimizer run: wall-clock seconds and, optionally, memory in MB beyond the idle worker's."""

    timeout_s: float
    memory_mb: float | None = None


_current_limits: ContextVar[OptimizerLimits | None] = ContextVar("latpred_optimizer_limits", default=None)


@contextmanager
def optimizer_limits(limits: OptimizerLimits | None) -> Iterator[None]:
    """Within this block (and threads started from its context) optimize_model runs under these limits."""
    token = _current_limits.set(limits)
    try:
        yield
    finally:
        _current_limits.reset(token)


_MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
_WORKER_START_TIMEOUT_S = 120.0


class _Worker:
    """One spawned process running `_serve_optimizer`, and the parent's end of its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve_optimizer, args=(child_end,), name="latpred-optimizer",
                                       daemon=True)
        self.process.start()
        child_end.close()
        if not self.connection.poll(_WORKER_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"the optimizer worker did not start within {_WORKER_START_TIMEOUT_S:g} s")
        self.connection.recv()  # "ready": onnxruntime is imported
        # Address space its heap kept from earlier jobs (bytes above its idle size after its last job): a later
        # job runs with its limit on top of the idle size, so memory kept is memory that job gets for free.
        self.kept_bytes = 0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=10)
        self.connection.close()


class _WorkerPool:
    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._started = 0
        self._available = threading.Condition()

    def optimize(self, data: bytes, runtime: RuntimeSpec, level: str, limits: OptimizerLimits,
                 weights: bool = True) -> bytes:
        too_slow = f"the runtime's optimizer ran past the time limit of {limits.timeout_s:g} s on this model"
        worker = self._checkout(limits)
        healthy = False
        try:
            # Only the optimizer's own time counts, not the wait for a free worker or its start.
            started = time.monotonic()
            worker.connection.send((data, runtime.to_dict(), level, limits.memory_mb, weights))
            if not worker.connection.poll(limits.timeout_s):
                raise InvalidModelError(too_slow)
            try:
                outcome, payload, kept_bytes = worker.connection.recv()
            except EOFError:
                worker.process.join(timeout=10)
                code = worker.process.exitcode
                raise InvalidModelError(f"the runtime's optimizer crashed on this model (exit code {code})"
                                        + _under_memory_limit(limits)) from None
            worker.kept_bytes = kept_bytes
            healthy = not _worn(worker, limits)
        finally:
            self._checkin(worker, healthy)
        if time.monotonic() - started > limits.timeout_s:  # poll waits whole milliseconds at least
            raise InvalidModelError(too_slow)
        if outcome == "invalid":
            raise InvalidModelError(payload)
        if outcome == "error":
            if limits.memory_mb is not None:
                # Under an address-space limit the runtime fails in many ways (threads it cannot start,
                # allocations in its logger): the model's size, not a bug, is what the caller should hear.
                raise InvalidModelError(f"the runtime's optimizer failed on this model ({payload})"
                                        + _under_memory_limit(limits))
            raise RuntimeError(f"the optimizer worker failed: {payload}")
        return bytes(payload)

    def _checkout(self, limits: OptimizerLimits) -> _Worker:
        with self._available:
            while not self._idle and self._started >= _MAX_WORKERS:
                self._available.wait()
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive() and not _worn(worker, limits):
                    return worker
                # Died while idle (killed from outside), or kept more from earlier jobs under a looser limit than
                # this job's limit allows: start another.
                self._started -= 1
                worker.kill()
            self._started += 1
        try:
            return _Worker()
        except BaseException:
            with self._available:
                self._started -= 1
                self._available.notify()
            raise

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._available:
            if healthy:
                self._idle.append(worker)
            else:
                self._started -= 1
            self._available.notify()


    def forget(self) -> None:
        """In a forked child: drop this process's copies of the parent's pipes, never its workers."""
        for worker in self._idle:
            worker.connection.close()
        self._idle.clear()


_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _workers() -> _WorkerPool:
    """This process's pool of optimizer workers, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _WorkerPool()
        return _pool


def _forget_parent_workers() -> None:
    # A forked child (a server forking its workers after start-up) starts its own pool: the parent's workers
    # answer the parent, and its locks may have been held by another thread at the fork.
    global _pool, _pool_lock
    if _pool is not None:
        _pool.forget()
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_workers)


def _serve_optimizer(connection: Connection) -> None:
    """The worker's loop: optimize each model sent; answer ("ok", bytes) / ("invalid", message) / ("error", message),
    and whether the worker is worn out (has grown by half its memory limit): the parent then replaces it."""
    import onnxruntime  # noqa: F401  (imported once, before the first job)

    tune_allocator()
    # An empty folder of its own as the working directory: nothing a model names by a relative path is there.
    os.chdir(tempfile.mkdtemp(prefix="latpred-optimizer-"))
    idle_bytes = _address_space_bytes()
    connection.send("ready")
    while True:
        try:
            data, runtime_fields, level, memory_mb, weights = connection.recv()
        except EOFError:  # the parent went away
            return
        try:
            with _address_space_limit(idle_bytes, memory_mb):
                answer: tuple[str, object] = ("ok", _optimize_bytes(data, RuntimeSpec.from_dict(runtime_fields),
                                                                    level, weights))
        except InvalidModelError as exc:
            answer = ("invalid", str(exc))
        except MemoryError:
            answer = ("invalid", f"the runtime's optimizer ran past the memory limit of {memory_mb:g} MB on this "
                                 "model")
        except Exception as exc:  # reported to the parent, which raises it there
            answer = ("error", f"{type(exc).__name__}: {exc}")
        del data
        release_free_memory()
        # What the heap kept of the job's allocations: the parent retires a worker that kept much, under the
        # next job's limit (_worn).
        now_bytes = _address_space_bytes()
        connection.send((*answer, max(0, now_bytes - idle_bytes) if idle_bytes and now_bytes else 0))


def _worn(worker: _Worker, limits: OptimizerLimits) -> bool:
    """Whether the worker's heap kept more than half of the job's memory limit: it would run past the limit.

    glibc keeps freed blocks of up to 32 MB in the heap once such blocks were freed, so a job under a tight
    limit run by a worker that earlier ran a big model under a loose one could allocate from what that model
    left, never meeting its limit (the memory-limit test passed or failed by which worker it drew).
    """
    return limits.memory_mb is not None and worker.kept_bytes > limits.memory_mb * 2**20 / 2


def _under_memory_limit(limits: OptimizerLimits) -> str:
    return "" if limits.memory_mb is None else f" under the memory limit of {limits.memory_mb:g} MB"


_BAD_ALLOC = ("bad_alloc", "bad allocation", "failed to allocate", "cannot allocate memory",
              "resource temporarily unavailable")


@contextmanager
def _address_space_limit(idle_bytes: int | None, memory_mb: float | None) -> Iterator[None]:
    """Cap this process's address space at its idle size plus `memory_mb` for the block (Linux)."""
    if memory_mb is None:
        yield
        return
    if idle_bytes is None:
        logger.warning("no /proc/self/status: the optimizer runs without a memory limit")
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = idle_bytes + int(memory_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    except InvalidModelError as exc:
        # onnxruntime reports a failed allocation as a load error; say which limit it hit.
        if any(marker in str(exc).lower() for marker in _BAD_ALLOC):
            raise MemoryError(str(exc)) from exc
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:")), None)
