"""What decides a device's kernels, and whether this host can build them as the device does.

A device's kernels are its runtime's: which fusions and layouts run depends on the runtime and its version, the
execution provider and the CPU (x86 NCHWc blocks of 8 or 16 floats, none on ARM; int8 layers a CPU without fast
signed int8 leaves unfused). The agent that profiles a device observes what decides them (`observe_kernel_profile`):
its runtime, CPU architecture and instruction set, NCHWc block, and the kernels its runtime builds for a few probe
models (small real exports in data/probes, compressed as latpred's configs compress them). A host that predicts for
the device builds the same probes with its own runtime, and with the graph transformers the device's runtime does
not run left out (`reproduce_kernels`); the kinds of model whose probes come out the same are the kinds it predicts
for the device. For any other kind it refuses, saying which probe differs: never a silent mismatch.
"""
from __future__ import annotations

import logging
import platform
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx

from predictor.compression.config import CompressionConfig, parse_config
from predictor.errors import LatpredError
from predictor.packaged import packaged_data_dir

__all__ = [
    "CATEGORIES",
    "DEFAULT_PROBES_DIR",
    "KERNEL_PROFILE_VERSION",
    "DeviceKernels",
    "KernelProfile",
    "UnreproducibleKernelsError",
    "categories_of",
    "config_categories",
    "model_categories",
    "cpu_features",
    "kernels_for_device",
    "observe_kernel_profile",
    "probe_hashes",
    "reproduce_kernels",
]

logger = logging.getLogger(__name__)

DEFAULT_PROBES_DIR = packaged_data_dir() / "probes"
KERNEL_PROFILE_VERSION = 1

# The kinds of model a device's runtime may build differently, each with the probes that show it: a probe model and
# the config that compresses it. A model (with its config) needs the kinds its layers are of (categories_of).
_PROBES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fp32": [("cnn.onnx", {})],
    "fp32_transformer": [("bert.onnx", {}), ("gpt2.onnx", {})],
    "int8_static_u8": [("cnn.onnx", {"default": {"bits": 8}}), ("bert.onnx", {"default": {"bits": 8}})],
    "int8_static_s8": [("cnn.onnx", {"default": {"bits": 8, "activation_type": "int8", "per_channel": False}})],
    "int8_dynamic": [("bert.onnx", {"default": {"bits": 8, "quantization": "dynamic"}})],
    "int4": [("bert.onnx", {"default": {"bits": 4}})],
    "fp16": [("cnn.onnx", {"default": {"bits": 16}})],
}
CATEGORIES = tuple(_PROBES)
# Graph transformers a device's runtime may not run: the NCHWc layout exists on x86 only (onnxruntime's MLAS).
_OPTIONAL_TRANSFORMERS: tuple[tuple[str, ...], ...] = ((), ("NchwcTransformer",))
# CPU features that change which kernels onnxruntime builds or how they run, by architecture (qemu-user shows an
# emulated aarch64 process the host's /proc/cpuinfo: flags of another architecture are not the process's).
_ISA_FLAGS = {
    "x86_64": re.compile(r"^(avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512vnni|avx_vnni|amx_int8|amx_bf16|fma|"
                         r"f16c)$"),
    "aarch64": re.compile(r"^(asimd|asimddp|asimdhp|i8mm|sve|sve2|bf16)$"),
}


class UnreproducibleKernelsError(LatpredError):
    """This host cannot build the kernels a device's runtime builds for a model (a 4xx, saying which and why)."""


@dataclass(frozen=True)
class KernelProfile:
    """What decides a device's kernels, as its agent observed them."""

    backend: str
    runtime_version: str
    execution_provider: str
    machine: str  # platform.machine(): x86_64, aarch64, ...
    isa: tuple[str, ...]  # CPU features that change kernels (avx2, avx512_vnni, asimd, i8mm, ...)
    nchwc_block: int  # onnxruntime's NCHWc channel block on this CPU (8, 16), 0 where it runs none
    # Each probe's kernels as the device's runtime builds them ([op type, key hash] in execution order), by
    # category and probe.
    probes: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)
    version: int = KERNEL_PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "backend": self.backend, "runtime_version": self.runtime_version,
                "execution_provider": self.execution_provider, "machine": self.machine, "isa": list(self.isa),
                "nchwc_block": self.nchwc_block, "probes": self.probes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelProfile:
        """Read a stored or uploaded profile; ValueError for another version or a malformed one."""
        if data.get("version") != KERNEL_PROFILE_VERSION:
            raise ValueError(f"kernel profile version {data.get('version')!r}, expected {KERNEL_PROFILE_VERSION}: "
                             "profile the device again with this latpred")
        try:
            probes = {str(category): {str(name): [[str(op), str(h)] for op, h in kernels]
                                      for name, kernels in entries.items()}
                      for category, entries in dict(data.get("probes") or {}).items()}
            return cls(backend=str(data["backend"]), runtime_version=str(data["runtime_version"]),
                       execution_provider=str(data["execution_provider"]), machine=str(data["machine"]),
                       isa=tuple(str(flag) for flag in data.get("isa") or ()), nchwc_block=int(data["nchwc_block"]),
                       probes=probes)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed kernel profile: {exc}") from exc

    def describe(self) -> str:
        """One line: the runtime and the CPU that decide the kernels."""
        isa = ", ".join(self.isa) or "CPU features not read"
        block = f"NCHWc block {self.nchwc_block}" if self.nchwc_block else "no NCHWc layout"
        return f"{self.backend} {self.runtime_version} on {self.machine} ({isa}; {block})"


def cpu_features() -> tuple[str, ...]:
    """The CPU features of this host that change kernels (from /proc/cpuinfo's flags or Features), for the
    architecture this process runs as."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    pattern = _ISA_FLAGS.get(machine)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    if pattern is None:
        return ()
    found: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            found.update(flag for flag in value.split() if pattern.match(flag))
    return tuple(sorted(found))


def _probe_model(probes_dir: Path, file: str, raw_config: dict[str, Any]) -> onnx.ModelProto:
    from predictor.compression.apply import apply_config
    from predictor.model.graph import load_model, set_input_shapes

    model = load_model(probes_dir / file)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in model.graph.input
              if v.name not in {init.name for init in model.graph.initializer}}
    return apply_config(set_input_shapes(model, shapes), parse_config(raw_config))


@lru_cache(maxsize=32)
def _probe_model_bytes(probes_dir: Path, file: str, config_json: str) -> bytes:
    """A probe compressed by its config (the same bytes for every runtime it is built with)."""
    import json

    return _probe_model(probes_dir, file, json.loads(config_json)).SerializeToString()


def probe_hashes(runtime: Any, categories: Iterable[str] = CATEGORIES,
                 probes_dir: Path = DEFAULT_PROBES_DIR) -> dict[str, dict[str, list[list[str]]]]:
    """The kernels `runtime` builds for each probe of the categories ([op type, key hash], in execution order)."""
    import json

    from predictor.kernels.keys import extract_kernels

    found: dict[str, dict[str, list[list[str]]]] = {}
    for category in categories:
        entries: dict[str, list[list[str]]] = {}
        for file, raw in _PROBES[category]:
            data = _probe_model_bytes(probes_dir, file, json.dumps(raw, sort_keys=True))
            try:
                kernels = extract_kernels(onnx.load_model_from_string(data), runtime)
            except LatpredError as exc:  # a runtime that cannot build a probe: no kernels of that kind there
                logger.warning("probe %s/%s does not build on %s: %s", category, file, runtime, exc)
                entries[file] = []
                continue
            entries[file] = [[kernel.op_type, kernel.key.key_hash] for kernel in kernels]
        found[category] = entries
    return found


def observe_kernel_profile(runtime: Any, probes_dir: Path = DEFAULT_PROBES_DIR) -> KernelProfile:
    """What decides this host's kernels for `runtime` (run by the agent on the device)."""
    from predictor.runtime.optimizer import nchwc_block_size

    return KernelProfile(backend=runtime.backend, runtime_version=runtime.runtime_version,
                         execution_provider=runtime.execution_provider, machine=platform.machine(),
                         isa=cpu_features(), nchwc_block=nchwc_block_size(runtime),
                         probes=probe_hashes(runtime, probes_dir=probes_dir))


@dataclass(frozen=True)
class DeviceKernels:
    """How this host builds a device's kernels: its runtime with some transformers left out, and for which kinds
    of model the probes came out as the device's (`reproduced`); why not for the others (`differs`)."""

    device: str
    runtime: Any  # RuntimeSpec for extraction on this host
    reproduced: frozenset[str]  # kinds whose probes come out the same, or differ only in `ops`
    differs: dict[str, str]  # why a kind is not (or not wholly) reproduced
    profile: KernelProfile | None = None
    host: str = ""
    # Per kind that is reproduced but for some kernels: the op types of the kernels its probes build otherwise
    # there (a runtime version that fuses transposes into matmuls and one that does not): a model of that kind is
    # built as the device builds it only without kernels of those op types.
    ops: dict[str, frozenset[str]] = field(default_factory=dict)

    def check(self, categories: Iterable[str], op_types: Iterable[str] = ()) -> None:
        """Raise UnreproducibleKernelsError if a model (of these kinds, with kernels of these op types as this host
        builds them) has kernels this host does not build as the device does."""
        categories = list(categories)
        missing = [category for category in categories if category not in self.reproduced]
        device_runtime = self.profile.describe() if self.profile else "its runtime"
        if missing:
            first = missing[0]
            raise UnreproducibleKernelsError(
                f"this model has {', '.join(_LABELS.get(c, c) for c in missing)} layers, which device {self.device} "
                f"({device_runtime}) builds differently from this host ({self.host}): {self.differs.get(first, '')};"
                " predict it on a host whose runtime and CPU are the device's kind")
        used = set(op_types)
        for category in categories:
            unlike = sorted(used & self.ops.get(category, frozenset()))
            if unlike:
                raise UnreproducibleKernelsError(
                    f"this model's {', '.join(unlike)} kernels are built differently by device {self.device} "
                    f"({device_runtime}) than by this host ({self.host}): {self.differs.get(category, '')}; predict "
                    "it on a host whose runtime and CPU are the device's kind")

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime.to_dict(), "reproduced": sorted(self.reproduced), "differs": self.differs,
                "ops": {category: sorted(ops) for category, ops in self.ops.items()}, "host": self.host}


_LABELS = {"fp32": "float", "fp32_transformer": "float attention", "int8_static_u8": "static int8 (uint8 activations)",
           "int8_static_s8": "static int8 (int8 activations)", "int8_dynamic": "dynamic int8",
           "int4": "int4 weight-only", "fp16": "fp16"}


def reproduce_kernels(device: str, profile: KernelProfile, server_runtime: Any,
                      probes_dir: Path = DEFAULT_PROBES_DIR) -> DeviceKernels:
    """How this host builds `device`'s kernels: the setting of its runtime whose probes come out as the device's
    for the most kinds of model (float first). Kinds no setting reproduces are refused (DeviceKernels.check)."""
    from predictor.runtime.optimizer import nchwc_block_size

    host = (f"{server_runtime.backend} {server_runtime.runtime_version} on {platform.machine()} "
            f"(NCHWc block {nchwc_block_size(server_runtime) or 'none'})")
    if profile.backend != server_runtime.backend or profile.execution_provider != server_runtime.execution_provider:
        reason = (f"the device runs {profile.backend} with {profile.execution_provider}, this host "
                  f"{server_runtime.backend} with {server_runtime.execution_provider}")
        return DeviceKernels(device, server_runtime, frozenset(), dict.fromkeys(CATEGORIES, reason), profile, host)
    best: DeviceKernels | None = None
    best_score: tuple[bool, int, int] = (False, 0, 0)
    for disabled in _OPTIONAL_TRANSFORMERS:
        runtime = replace(server_runtime, disabled_optimizers=disabled)
        ours = probe_hashes(runtime, probes_dir=probes_dir)
        reproduced, differs, unlike_ops = set(), {}, {}
        for category in CATEGORIES:
            theirs = profile.probes.get(category)
            if theirs is None:
                differs[category] = "the device's agent reported no probe of this kind"
                continue
            ops: set[str] = set()
            reasons = []
            for file, _ in _PROBES[category]:
                there, here = theirs.get(file, []), ours[category].get(file, [])
                if not there or not here:
                    reasons.append(f"probe {file} does not build {'there' if not there else 'here'}")
                    continue
                only_there = Counter(h for _, h in there) - Counter(h for _, h in here)
                only_here = Counter(h for _, h in here) - Counter(h for _, h in there)
                if only_there or only_here:
                    ops.update(op for op, h in there if h in only_there)
                    ops.update(op for op, h in here if h in only_here)
                    reasons.append(f"probe {file} ({_LABELS.get(category, category)}) runs as {len(there)} kernels "
                                   f"there and {len(here)} here, {sum(only_there.values())} of them unlike any "
                                   f"here ({', '.join(sorted(ops))})")
            if not reasons:
                reproduced.add(category)
            elif ops and all("does not build" not in r for r in reasons):
                reproduced.add(category)  # but for kernels of the op types that differ
                unlike_ops[category] = frozenset(ops)
                differs[category] = "; ".join(reasons)
            else:
                differs[category] = "; ".join(reasons)
        candidate = DeviceKernels(device, runtime, frozenset(reproduced), differs, profile, host, unlike_ops)
        score = ("fp32" in candidate.reproduced, len(candidate.reproduced), -sum(map(len, unlike_ops.values())))
        if best is None or score > best_score:
            best, best_score = candidate, score
    assert best is not None
    logger.info("device %s: kernels reproduced here for %s", device, ", ".join(sorted(best.reproduced)) or "none")
    return best


_QDQ = {"QuantizeLinear", "DequantizeLinear"}


_ATTENTION_OPS = {"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization"}


def categories_of(model: onnx.ModelProto, config: CompressionConfig | None = None) -> set[str]:
    """The kinds of kernel a model (compressed by `config`) needs: float layers (and attention blocks), its own
    quantized layers and the config's."""
    return {*model_categories(model), *config_categories({node.name for node in model.graph.node}, config)}


def model_categories(model: onnx.ModelProto) -> frozenset[str]:
    """The kinds of kernel the model needs as it is: float layers (and attention blocks) and its own quantized
    layers."""
    found = {"fp32"}
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in _ATTENTION_OPS:
            found.add("fp32_transformer")
        if node.op_type in _QDQ:
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
            signed = zero_point is not None and zero_point.data_type == onnx.TensorProto.INT8
            found.add("int8_static_s8" if signed else "int8_static_u8")
        elif node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                              "MatMulIntegerToFloat"):
            found.add("int8_dynamic")
        elif node.op_type == "MatMulNBits":
            found.add("int4")
        elif node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute):
            found.add("fp16")
    return frozenset(found)


def config_categories(node_names: AbstractSet[str], config: CompressionConfig | None) -> set[str]:
    """The kinds of kernel `config` adds to a model of these nodes: its int8, int4 and fp16 layers."""
    found: set[str] = set()
    if config is None or config.is_identity:
        return found
    for resolved in config.resolutions(node_names):
        if resolved.bits == 8:
            found.add("int8_dynamic" if resolved.quantization == "dynamic"
                      else "int8_static_s8" if resolved.activation_type == "int8" else "int8_static_u8")
        elif resolved.bits == 4:
            found.add("int4")
        elif resolved.bits == 16:
            found.add("fp16")
    return found


_known: dict[tuple[str, str, Any], DeviceKernels] = {}
_KNOWN_MAX = 256


def kernels_for_device(name: str, runtime: Any, kernel_profile: Mapping[str, Any] | None,
                       server_runtime: Any) -> DeviceKernels:
    """How this host builds the kernels of device `name` (its RuntimeSpec `runtime` and stored kernel profile).

    A device without a kernel profile (registered before latpred recorded one) is taken to build its kernels as
    this host does when its runtime and version are this host's, and refused otherwise. TensorRT devices are
    refused: TensorRT's builder decides an engine's layer fusion on the GPU, which this host cannot do for a model
    the device never built.
    """
    import json

    server = replace(server_runtime, threads=runtime.threads)
    host = f"{server.backend} {server.runtime_version} on {platform.machine()}"
    if runtime.backend != "onnxruntime":
        reason = (f"{runtime.backend} builds an engine's kernels (its layer fusion) on the device itself; this host "
                  "cannot build them for a model the device never built: profile the model there "
                  f"(`latpred profile --device {name} --for-model MODEL`) and predict on the device")
        return DeviceKernels(name, server, frozenset(), dict.fromkeys(CATEGORIES, reason), None, host)
    if kernel_profile is None:
        if (runtime.runtime_version, runtime.execution_provider) == (server.runtime_version,
                                                                      server.execution_provider):
            return DeviceKernels(name, server, frozenset(CATEGORIES), {}, None, host)
        reason = (f"the device runs {runtime.backend} {runtime.runtime_version} and recorded no kernel profile "
                  "(profile it again with this latpred to record one)")
        return DeviceKernels(name, server, frozenset(), dict.fromkeys(CATEGORIES, reason), None, host)
    try:
        profile = KernelProfile.from_dict(kernel_profile)
    except ValueError as exc:
        return DeviceKernels(name, server, frozenset(), dict.fromkeys(CATEGORIES, str(exc)), None, host)
    cache_key = (name, json.dumps(kernel_profile, sort_keys=True), server)
    found = _known.get(cache_key)
    if found is None:
        found = reproduce_kernels(name, profile, server)
        if len(_known) >= _KNOWN_MAX:
            _known.clear()
        _known[cache_key] = found
    return found
