"""A zoo of public CNN and vision-transformer architectures, built directly as ONNX graphs.

Every model is written node by node with :mod:`onnx.helper`, following the published layer definitions
(torchvision for the CNNs, timm for the ViTs): channel counts, strides, block structure and parameter
counts match the reference implementations (BatchNorm running statistics are not counted, as in torch).
Weights are random (He-normal scaled, fixed seed), float32; nothing is downloaded and torch is not needed.

The graphs look like a ``torch.onnx.export`` in eval mode at opset 17, without constant folding of the
BatchNorms: Conv -> BatchNormalization -> activation, Relu6 as Clip, SiLU as Sigmoid+Mul, GELU as the erf
formula (Div, Erf, Add, Mul, Mul) so that onnxruntime fuses it, LayerNormalization, Gemm classifiers,
attention as MatMul/Reshape/Transpose/Softmax.  Dropout and stochastic depth are absent (inference).

Each builder takes ``batch``, ``image_size``, ``num_classes`` (and ``width_mult`` where the family has
one) and returns a model with a single input ``input`` of shape [batch, 3, image_size, image_size] and a
single output ``logits`` of shape [batch, num_classes].

CLI::

    python -m tests.zoo OUTDIR [--names resnet18,vit_tiny] [--image-size 224] [--batch 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "latpred.benchmarks.zoo"


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round ``v`` to a multiple of ``divisor`` (never below 90%)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _T(NamedTuple):
    """An NCHW activation: its tensor name, channel count and spatial size."""

    name: str
    c: int
    h: int
    w: int


class _Builder:
    """Accumulates nodes and initializers; shared building blocks for every architecture."""

    def __init__(self, arch: str, *, batch: int, image_size: int, num_classes: int, seed: int = 0) -> None:
        if batch < 1 or image_size < 1 or num_classes < 1:
            raise ValueError("batch, image_size and num_classes must be positive")
        self.arch = arch
        self.batch = batch
        self.image_size = image_size
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = {"input"}
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.params = 0
        self.macs = 0

    # ------------------------------------------------------------------ primitives
    @property
    def input(self) -> _T:
        return _T("input", 3, self.image_size, self.image_size)

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"{self.arch}: duplicate name {name!r}")
        self._names.add(name)
        return name

    def tensor(self, name: str, arr: np.ndarray, *, trainable: bool = True) -> str:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(arr, self._claim(name)))
        if trainable:
            self.params += arr.size
        return name

    def normal(self, name: str, shape: Sequence[int], std: float) -> str:
        return self.tensor(name, self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std))

    def const(self, value: object, dtype: type = np.float32) -> str:
        """A shared non-trainable constant (scalars for activations, Reshape shapes, Gather indices)."""
        arr: np.ndarray = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self._claim(f"const.{len(self._consts)}")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def _emit(self, op: str, inputs: Sequence[str], name: str, outputs: Sequence[str], **attrs: Any) -> None:
        self._claim(name)
        for o in outputs:
            if o != name:
                self._claim(o)
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def node(self, op: str, inputs: Sequence[str], name: str, *, out: str | None = None, **attrs: Any) -> str:
        """Append one single-output node; its output tensor is named after the node unless ``out``."""
        output = out or name
        self._emit(op, inputs, name, [output], **attrs)
        return output

    # ------------------------------------------------------------------ activations
    def act(self, x: str, kind: str | None, name: str) -> str:
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x], name)
        if kind == "relu6":
            return self.node("Clip", [x, self.const(0.0), self.const(6.0)], name)
        if kind == "hardswish":
            return self.node("HardSwish", [x], name)
        if kind == "hardsigmoid":  # torch: relu6(x + 3) / 6
            return self.node("HardSigmoid", [x], name, alpha=1.0 / 6.0, beta=0.5)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], name)
        if kind == "silu":
            s = self.node("Sigmoid", [x], f"{name}.sigmoid")
            return self.node("Mul", [x, s], f"{name}.mul")
        if kind == "gelu":  # exact GELU as exported by torch; onnxruntime fuses it into Gelu
            d = self.node("Div", [x, self.const(math.sqrt(2.0))], f"{name}.div")
            e = self.node("Erf", [d], f"{name}.erf")
            a = self.node("Add", [e, self.const(1.0)], f"{name}.add")
            m = self.node("Mul", [x, a], f"{name}.mul")
            return self.node("Mul", [m, self.const(0.5)], f"{name}.mul_half")
        raise ValueError(f"unknown activation {kind!r}")

    def act_t(self, x: _T, kind: str | None, name: str) -> _T:
        return _T(self.act(x.name, kind, name), x.c, x.h, x.w)

    # ------------------------------------------------------------------ conv-net blocks
    def conv(
        self,
        x: _T,
        cout: int,
        k: int,
        stride: int = 1,
        *,
        name: str,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = False,
    ) -> _T:
        pad = k // 2 if pad is None else pad
        if x.c % groups or cout % groups:
            raise ValueError(f"{name}: channels {x.c}->{cout} not divisible by groups={groups}")
        fan_in = (x.c // groups) * k * k
        h = (x.h + 2 * pad - k) // stride + 1
        w = (x.w + 2 * pad - k) // stride + 1
        if h < 1 or w < 1:
            raise ValueError(f"{self.arch}: spatial size vanishes at {name}; image_size is too small")
        inputs = [x.name, self.normal(f"{name}.weight", (cout, x.c // groups, k, k), math.sqrt(2.0 / fan_in))]
        if bias:
            inputs.append(self.normal(f"{name}.bias", (cout,), 0.01))
        self.macs += self.batch * cout * h * w * fan_in
        out = self.node(
            "Conv",
            inputs,
            name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[1, 1],
            group=groups,
        )
        return _T(out, cout, h, w)

    def bn(self, x: _T, name: str, eps: float = 1e-5) -> _T:
        c = x.c
        inputs = [
            x.name,
            self.tensor(f"{name}.weight", self.rng.uniform(0.8, 1.0, c)),
            self.tensor(f"{name}.bias", self.rng.normal(0.0, 0.01, c)),
            self.tensor(f"{name}.running_mean", self.rng.normal(0.0, 0.01, c), trainable=False),
            self.tensor(f"{name}.running_var", self.rng.uniform(0.9, 1.1, c), trainable=False),
        ]
        return _T(self.node("BatchNormalization", inputs, name, epsilon=eps, momentum=0.9), c, x.h, x.w)

    def conv_bn_act(
        self,
        x: _T,
        cout: int,
        k: int,
        stride: int = 1,
        *,
        prefix: str,
        groups: int = 1,
        act: str | None = "relu",
        names: tuple[str, str, str] | None = None,
    ) -> _T:
        """Conv (no bias) -> BatchNormalization -> activation (``act=None`` for a linear projection)."""
        cn, bn, an = names or (f"{prefix}.conv", f"{prefix}.bn", f"{prefix}.{act}")
        y = self.bn(self.conv(x, cout, k, stride, name=cn, groups=groups), bn)
        return self.act_t(y, act, an)

    def maxpool(self, x: _T, k: int, stride: int, pad: int, name: str, *, ceil: bool = False) -> _T:
        return self._pool("MaxPool", x, k, stride, pad, name, ceil)

    def avgpool(self, x: _T, k: int, stride: int, pad: int, name: str) -> _T:
        return self._pool("AveragePool", x, k, stride, pad, name, False)

    def _pool(self, op: str, x: _T, k: int, stride: int, pad: int, name: str, ceil: bool) -> _T:
        def size(n: int) -> int:
            span = n + 2 * pad - k
            out = (-(-span // stride) if ceil else span // stride) + 1
            if ceil and (out - 1) * stride >= n + pad:  # torch: last window must start inside the input
                out -= 1
            return out

        h, w = size(x.h), size(x.w)
        if h < 1 or w < 1:
            raise ValueError(f"{self.arch}: spatial size vanishes at {name}; image_size is too small")
        attrs: dict[str, Any] = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4}
        if ceil:
            attrs["ceil_mode"] = 1
        if op == "AveragePool" and pad:
            attrs["count_include_pad"] = 1
        return _T(self.node(op, [x.name], name, **attrs), x.c, h, w)

    def global_pool(self, x: _T, name: str) -> _T:
        return _T(self.node("GlobalAveragePool", [x.name], name), x.c, 1, 1)

    def adaptive_avgpool(self, x: _T, size: int, name: str) -> _T:
        """torch ``AdaptiveAvgPool2d(size)``: identity, an exact AveragePool, or (approximate) Resize."""
        if x.h == size and x.w == size:
            return x
        if x.h % size == 0 and x.w % size == 0 and x.h // size == x.w // size:
            return self.avgpool(x, x.h // size, x.h // size, 0, name)
        sizes = self.ints([self.batch, x.c, size, size])
        out = self.node("Resize", [x.name, "", "", sizes], name, mode="linear")
        return _T(out, x.c, size, size)

    def add(self, a: _T, b: _T, name: str) -> _T:
        return _T(self.node("Add", [a.name, b.name], name), a.c, a.h, a.w)

    def concat(self, xs: Sequence[_T], name: str) -> _T:
        if len(xs) == 1:
            return xs[0]
        out = self.node("Concat", [x.name for x in xs], name, axis=1)
        return _T(out, sum(x.c for x in xs), xs[0].h, xs[0].w)

    def se_block(
        self, x: _T, squeeze: int, *, prefix: str, act: str = "relu", gate: str = "hardsigmoid"
    ) -> _T:
        """Squeeze-excitation: GlobalAveragePool, 1x1 conv, act, 1x1 conv, gate, channel-wise Mul."""
        s = self.global_pool(x, f"{prefix}.avgpool")
        s = self.act_t(self.conv(s, squeeze, 1, name=f"{prefix}.fc1", bias=True), act, f"{prefix}.{act}")
        s = self.act_t(self.conv(s, x.c, 1, name=f"{prefix}.fc2", bias=True), gate, f"{prefix}.{gate}")
        return _T(self.node("Mul", [x.name, s.name], f"{prefix}.scale"), x.c, x.h, x.w)

    def inverted_residual(
        self,
        x: _T,
        cout: int,
        k: int,
        stride: int,
        expanded: int,
        *,
        prefix: str,
        act: str,
        se_squeeze: int | None = None,
        se_act: str = "relu",
        se_gate: str = "hardsigmoid",
    ) -> _T:
        """MobileNetV2/V3, MnasNet and EfficientNet MBConv: [expand] -> depthwise -> [SE] -> project."""
        y = x
        if expanded != x.c:
            y = self.conv_bn_act(y, expanded, 1, prefix=f"{prefix}.expand", act=act)
        y = self.conv_bn_act(y, expanded, k, stride, prefix=f"{prefix}.dw", groups=expanded, act=act)
        if se_squeeze is not None:
            y = self.se_block(y, se_squeeze, prefix=f"{prefix}.se", act=se_act, gate=se_gate)
        y = self.conv_bn_act(y, cout, 1, prefix=f"{prefix}.project", act=None)
        if stride == 1 and x.c == cout:
            y = self.add(x, y, f"{prefix}.add")
        return y

    def classifier(self, x: _T, *, pool: str = "avgpool", fc: str = "fc") -> str:
        """GlobalAveragePool -> Flatten -> Gemm producing ``logits``."""
        p = self.global_pool(x, pool)
        f = self.node("Flatten", [p.name], f"{pool}.flatten", axis=1)
        return self.gemm(f, x.c, self.num_classes, fc, out="logits")

    # ------------------------------------------------------------------ dense / transformer blocks
    def gemm(self, x: str, din: int, dout: int, name: str, *, out: str | None = None) -> str:
        w = self.normal(f"{name}.weight", (dout, din), math.sqrt(1.0 / din))
        b = self.normal(f"{name}.bias", (dout,), 0.01)
        self.macs += self.batch * din * dout
        return self.node("Gemm", [x, w, b], name, out=out, alpha=1.0, beta=1.0, transB=1)

    def linear(self, x: str, din: int, dout: int, name: str, *, rows: int, std: float = 0.02) -> str:
        """torch Linear on an N-D tensor: MatMul with a [din, dout] weight, then Add bias."""
        w = self.normal(f"{name}.weight", (din, dout), std)
        b = self.normal(f"{name}.bias", (dout,), 0.01)
        self.macs += self.batch * rows * din * dout
        y = self.node("MatMul", [x, w], f"{name}.matmul")
        return self.node("Add", [y, b], f"{name}.add")

    def layer_norm(self, x: str, dim: int, name: str, eps: float = 1e-6) -> str:
        g = self.tensor(f"{name}.weight", self.rng.uniform(0.9, 1.1, dim))
        b = self.tensor(f"{name}.bias", self.rng.normal(0.0, 0.01, dim))
        return self.node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=eps)

    def layer_norm2d(self, x: _T, name: str, eps: float = 1e-6) -> _T:
        """ConvNeXt LayerNorm2d over channels of NCHW: Transpose -> LayerNormalization -> Transpose."""
        t = self.node("Transpose", [x.name], f"{name}.to_nhwc", perm=[0, 2, 3, 1])
        n = self.layer_norm(t, x.c, name, eps)
        return _T(self.node("Transpose", [n], f"{name}.to_nchw", perm=[0, 3, 1, 2]), x.c, x.h, x.w)

    def attention(self, x: str, n: int, dim: int, heads: int, prefix: str) -> str:
        """timm Attention: fused qkv Linear, per-head softmax(q k^T * scale) v, output projection."""
        hd = dim // heads
        b = self.batch
        qkv = self.linear(x, dim, 3 * dim, f"{prefix}.qkv", rows=n)
        qkv = self.node("Reshape", [qkv, self.ints([b, n, 3, heads, hd])], f"{prefix}.qkv.reshape")
        qkv = self.node("Transpose", [qkv], f"{prefix}.qkv.permute", perm=[2, 0, 3, 1, 4])
        q, k, v = (
            self.node("Gather", [qkv, self.const(i, np.int64)], f"{prefix}.{part}", axis=0)
            for i, part in enumerate("qkv")
        )
        kt = self.node("Transpose", [k], f"{prefix}.k.transpose", perm=[0, 1, 3, 2])
        s = self.node("MatMul", [q, kt], f"{prefix}.scores")
        s = self.node("Mul", [s, self.const(hd**-0.5)], f"{prefix}.scale")
        p = self.node("Softmax", [s], f"{prefix}.softmax", axis=-1)
        o = self.node("MatMul", [p, v], f"{prefix}.context")
        self.macs += 2 * b * heads * n * n * hd
        o = self.node("Transpose", [o], f"{prefix}.context.transpose", perm=[0, 2, 1, 3])
        o = self.node("Reshape", [o, self.ints([b, n, dim])], f"{prefix}.context.reshape")
        return self.linear(o, dim, dim, f"{prefix}.proj", rows=n)

    def mlp(self, x: str, rows: int, dim: int, hidden: int, prefix: str, fc: tuple[str, str]) -> str:
        h = self.linear(x, dim, hidden, f"{prefix}.{fc[0]}", rows=rows)
        h = self.act(h, "gelu", f"{prefix}.gelu")
        return self.linear(h, hidden, dim, f"{prefix}.{fc[1]}", rows=rows)

    def transformer_block(
        self, x: str, n: int, dim: int, heads: int, prefix: str, mlp_ratio: float = 4.0
    ) -> str:
        """Pre-norm ViT block: x + Attn(LN(x)), then x + MLP(LN(x))."""
        a = self.attention(self.layer_norm(x, dim, f"{prefix}.norm1"), n, dim, heads, f"{prefix}.attn")
        x = self.node("Add", [x, a], f"{prefix}.add1")
        h = self.layer_norm(x, dim, f"{prefix}.norm2")
        h = self.mlp(h, n, dim, int(dim * mlp_ratio), f"{prefix}.mlp", ("fc1", "fc2"))
        return self.node("Add", [x, h], f"{prefix}.add2")

    # ------------------------------------------------------------------ model
    def build(self, logits: str) -> onnx.ModelProto:
        if logits != "logits":
            raise AssertionError(f"{self.arch}: the last node must produce 'logits', got {logits!r}")
        b, s = self.batch, self.image_size
        graph = helper.make_graph(
            self.nodes,
            self.arch,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [b, 3, s, s])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b, self.num_classes])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(
            model, {"architecture": self.arch, "params": str(self.params), "macs": str(self.macs)}
        )
        return model


# ====================================================================== ResNet / ResNeXt / Wide ResNet
def _resnet(
    arch: str,
    block: str,
    layers: Sequence[int],
    *,
    groups: int = 1,
    width_per_group: int = 64,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, 64, 7, 2, prefix="", names=("conv1", "bn1", "relu"))
    x = b.maxpool(x, 3, 2, 1, "maxpool")
    expansion = 1 if block == "basic" else 4
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            stride = 2 if i > 0 and j == 0 else 1
            cout = planes * expansion
            if block == "basic":
                y = b.conv_bn_act(
                    x, planes, 3, stride, prefix=p, names=(f"{p}.conv1", f"{p}.bn1", f"{p}.relu1")
                )
                y = b.conv_bn_act(y, planes, 3, prefix=p, act=None, names=(f"{p}.conv2", f"{p}.bn2", ""))
            else:  # Bottleneck (v1.5: stride on the 3x3 conv)
                width = int(planes * (width_per_group / 64.0)) * groups
                y = b.conv_bn_act(x, width, 1, prefix=p, names=(f"{p}.conv1", f"{p}.bn1", f"{p}.relu1"))
                y = b.conv_bn_act(
                    y,
                    width,
                    3,
                    stride,
                    prefix=p,
                    groups=groups,
                    names=(f"{p}.conv2", f"{p}.bn2", f"{p}.relu2"),
                )
                y = b.conv_bn_act(y, cout, 1, prefix=p, act=None, names=(f"{p}.conv3", f"{p}.bn3", ""))
            shortcut = x
            if stride != 1 or x.c != cout:
                shortcut = b.conv_bn_act(
                    x,
                    cout,
                    1,
                    stride,
                    prefix=p,
                    act=None,
                    names=(f"{p}.downsample.0", f"{p}.downsample.1", ""),
                )
            x = b.act_t(b.add(y, shortcut, f"{p}.add"), "relu", f"{p}.relu")
    return b.build(b.classifier(x))


# ====================================================================== MobileNets, MnasNet, EfficientNet
def mobilenet_v2(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0, seed: int = 0
) -> onnx.ModelProto:
    arch = "mobilenet_v2" if width_mult == 1.0 else f"mobilenet_v2_{width_mult:g}".replace(".", "_")
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # fmt: skip
    x = b.conv_bn_act(b.input, _make_divisible(32 * width_mult), 3, 2, prefix="features.0", act="relu6")
    idx = 1
    for t, c, n, s in settings:
        cout = _make_divisible(c * width_mult)
        for j in range(n):
            x = b.inverted_residual(
                x, cout, 3, s if j == 0 else 1, x.c * t, prefix=f"features.{idx}", act="relu6"
            )
            idx += 1
    last = _make_divisible(1280 * max(1.0, width_mult))
    x = b.conv_bn_act(x, last, 1, prefix=f"features.{idx}", act="relu6")
    return b.build(b.classifier(x, fc="classifier"))


# (kernel, expanded, out, use_se, activation, stride) per torchvision mobilenetv3.py
_MBV3_LARGE = [
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]  # fmt: skip
_MBV3_SMALL = [
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1), (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1),
]  # fmt: skip


def _mobilenet_v3(
    arch: str,
    config: Sequence[tuple[int, int, int, bool, str, int]],
    last_channel: int,
    *,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, _make_divisible(16 * width_mult), 3, 2, prefix="features.0", act="hardswish")
    for i, (k, exp, out, use_se, act, stride) in enumerate(config, start=1):
        exp_c = _make_divisible(exp * width_mult)
        x = b.inverted_residual(
            x,
            _make_divisible(out * width_mult),
            k,
            stride,
            exp_c,
            prefix=f"features.{i}",
            act=act,
            se_squeeze=_make_divisible(exp_c // 4) if use_se else None,
        )
    x = b.conv_bn_act(x, 6 * x.c, 1, prefix=f"features.{len(config) + 1}", act="hardswish")
    p = b.global_pool(x, "avgpool")
    f = b.node("Flatten", [p.name], "avgpool.flatten", axis=1)
    hidden = _make_divisible(last_channel * width_mult)
    h = b.act(b.gemm(f, x.c, hidden, "classifier.0"), "hardswish", "classifier.1")
    return b.build(b.gemm(h, hidden, num_classes, "classifier.3", out="logits"))


# (expand_ratio, kernel, stride, in, out, layers) per torchvision efficientnet.py
_EFFICIENTNET_V1 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip


def _efficientnet(
    arch: str,
    width: float,
    depth: float,
    *,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, _make_divisible(32 * width), 3, 2, prefix="features.0", act="silu")
    for i, (t, k, s, _cin, cout, n) in enumerate(_EFFICIENTNET_V1, start=1):
        cout = _make_divisible(cout * width)
        for j in range(int(math.ceil(n * depth))):
            x = b.inverted_residual(
                x,
                cout,
                k,
                s if j == 0 else 1,
                _make_divisible(x.c * t),
                prefix=f"features.{i}.{j}",
                act="silu",
                se_squeeze=max(1, x.c // 4),
                se_act="silu",
                se_gate="sigmoid",
            )
    x = b.conv_bn_act(x, 4 * x.c, 1, prefix=f"features.{len(_EFFICIENTNET_V1) + 1}", act="silu")
    return b.build(b.classifier(x, fc="classifier.1"))


def mnasnet1_0(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0, seed: int = 0
) -> onnx.ModelProto:
    def depth(v: int) -> int:  # torchvision mnasnet._round_to_multiple_of(v * alpha, 8, 0.9)
        val = v * width_mult
        new = max(8, int(val + 4) // 8 * 8)
        return new if new >= 0.9 * val else new + 8

    arch = "mnasnet1_0" if width_mult == 1.0 else f"mnasnet{width_mult:g}".replace(".", "_")
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, depth(32), 3, 2, prefix="layers.0")
    x = b.conv_bn_act(x, depth(32), 3, prefix="layers.3", groups=x.c)
    x = b.conv_bn_act(x, depth(16), 1, prefix="layers.6", act=None)
    # (out, kernel, stride, expansion, repeats)
    stacks = [(24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2), (192, 5, 2, 6, 4),
              (320, 3, 1, 6, 1)]  # fmt: skip
    for i, (c, k, s, t, n) in enumerate(stacks, start=8):
        for j in range(n):
            x = b.inverted_residual(
                x, depth(c), k, s if j == 0 else 1, x.c * t, prefix=f"layers.{i}.{j}", act="relu"
            )
    x = b.conv_bn_act(x, 1280, 1, prefix="layers.14")
    return b.build(b.classifier(x, fc="classifier.1"))


# ====================================================================== ShuffleNetV2
_SHUFFLENET_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def shufflenet_v2(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0, seed: int = 0
) -> onnx.ModelProto:
    if width_mult not in _SHUFFLENET_CHANNELS:
        raise ValueError(f"shufflenet_v2 width_mult must be one of {sorted(_SHUFFLENET_CHANNELS)}")
    chans = _SHUFFLENET_CHANNELS[width_mult]
    arch = f"shufflenet_v2_x{width_mult:.1f}".replace(".", "_")
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, chans[0], 3, 2, prefix="conv1")
    x = b.maxpool(x, 3, 2, 1, "maxpool")

    def branch(y: _T, cout: int, stride: int, p: str) -> _T:
        y = b.conv_bn_act(y, cout, 1, prefix=f"{p}.pw1")
        y = b.conv_bn_act(y, cout, 3, stride, prefix=f"{p}.dw", groups=cout, act=None)
        return b.conv_bn_act(y, cout, 1, prefix=f"{p}.pw2")

    for s, (repeats, cout) in enumerate(zip((4, 8, 4), chans[1:4], strict=True), start=2):
        half = cout // 2
        for j in range(repeats):
            p = f"stage{s}.{j}"
            if j == 0:  # stride-2 unit: both branches see the whole input
                left = b.conv_bn_act(x, x.c, 3, 2, prefix=f"{p}.branch1.dw", groups=x.c, act=None)
                left = b.conv_bn_act(left, half, 1, prefix=f"{p}.branch1.pw")
                right = branch(x, half, 2, f"{p}.branch2")
            else:  # x.chunk(2, dim=1)
                l_name, r_name = f"{p}.split.0", f"{p}.split.1"
                b._emit("Split", [x.name, b.ints([half, half])], f"{p}.split", [l_name, r_name], axis=1)
                left = _T(l_name, half, x.h, x.w)
                right = branch(_T(r_name, half, x.h, x.w), half, 1, f"{p}.branch2")
            y = b.concat([left, right], f"{p}.concat")
            # channel_shuffle(groups=2): view(b, 2, c/2, h, w) -> transpose(1, 2) -> view(b, c, h, w)
            r = b.node("Reshape", [y.name, b.ints([batch, 2, half, y.h, y.w])], f"{p}.shuffle.reshape1")
            t = b.node("Transpose", [r], f"{p}.shuffle.transpose", perm=[0, 2, 1, 3, 4])
            x = _T(
                b.node("Reshape", [t, b.ints([batch, cout, y.h, y.w])], f"{p}.shuffle.reshape2"),
                cout,
                y.h,
                y.w,
            )
    x = b.conv_bn_act(x, chans[4], 1, prefix="conv5")
    return b.build(b.classifier(x))


# ====================================================================== SqueezeNet, VGG, AlexNet (no BN)
def squeezenet1_1(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    b = _Builder("squeezenet1_1", batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)

    def fire(y: _T, squeeze: int, expand: int, p: str) -> _T:
        s = b.act_t(b.conv(y, squeeze, 1, name=f"{p}.squeeze", bias=True), "relu", f"{p}.squeeze_activation")
        e1 = b.act_t(
            b.conv(s, expand, 1, name=f"{p}.expand1x1", bias=True), "relu", f"{p}.expand1x1_activation"
        )
        e3 = b.act_t(
            b.conv(s, expand, 3, name=f"{p}.expand3x3", bias=True), "relu", f"{p}.expand3x3_activation"
        )
        return b.concat([e1, e3], f"{p}.concat")

    x = b.act_t(b.conv(b.input, 64, 3, 2, name="features.0", pad=0, bias=True), "relu", "features.1")
    x = b.maxpool(x, 3, 2, 0, "features.2", ceil=True)
    x = fire(fire(x, 16, 64, "features.3"), 16, 64, "features.4")
    x = b.maxpool(x, 3, 2, 0, "features.5", ceil=True)
    x = fire(fire(x, 32, 128, "features.6"), 32, 128, "features.7")
    x = b.maxpool(x, 3, 2, 0, "features.8", ceil=True)
    for i, (sq, ex) in enumerate([(48, 192), (48, 192), (64, 256), (64, 256)], start=9):
        x = fire(x, sq, ex, f"features.{i}")
    x = b.act_t(b.conv(x, num_classes, 1, name="classifier.1", bias=True), "relu", "classifier.2")
    p = b.global_pool(x, "classifier.3")
    return b.build(b.node("Flatten", [p.name], "flatten", out="logits", axis=1))


def _fc_head(b: _Builder, x: _T, pool: int, hidden: int = 4096) -> str:
    """VGG/AlexNet head: AdaptiveAvgPool -> Flatten -> (Linear, ReLU) x2 -> Linear."""
    x = b.adaptive_avgpool(x, pool, "avgpool")
    f = b.node("Flatten", [x.name], "flatten", axis=1)
    h = b.act(b.gemm(f, x.c * pool * pool, hidden, "classifier.fc1"), "relu", "classifier.relu1")
    h = b.act(b.gemm(h, hidden, hidden, "classifier.fc2"), "relu", "classifier.relu2")
    return b.gemm(h, hidden, b.num_classes, "classifier.fc3", out="logits")


_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(
    arch: str, *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.input
    for i, v in enumerate(_VGG_CFGS[arch]):
        if v == "M":
            x = b.maxpool(x, 2, 2, 0, f"features.{i}.maxpool")
        else:
            x = b.act_t(
                b.conv(x, int(v), 3, name=f"features.{i}.conv", bias=True), "relu", f"features.{i}.relu"
            )
    return b.build(_fc_head(b, x, 7))


def alexnet(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    b = _Builder("alexnet", batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.act_t(b.conv(b.input, 64, 11, 4, name="features.0", pad=2, bias=True), "relu", "features.1")
    x = b.maxpool(x, 3, 2, 0, "features.2")
    x = b.act_t(b.conv(x, 192, 5, name="features.3", bias=True), "relu", "features.4")
    x = b.maxpool(x, 3, 2, 0, "features.5")
    x = b.act_t(b.conv(x, 384, 3, name="features.6", bias=True), "relu", "features.7")
    x = b.act_t(b.conv(x, 256, 3, name="features.8", bias=True), "relu", "features.9")
    x = b.act_t(b.conv(x, 256, 3, name="features.10", bias=True), "relu", "features.11")
    x = b.maxpool(x, 3, 2, 0, "features.12")
    return b.build(_fc_head(b, x, 6))


# ====================================================================== DenseNet
def densenet121(
    *, batch: int = 1, image_size: int = 224, num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    growth, bn_size, blocks = 32, 4, (6, 12, 24, 16)
    b = _Builder("densenet121", batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(
        b.input, 64, 7, 2, prefix="features", names=("features.conv0", "features.norm0", "features.relu0")
    )
    x = b.maxpool(x, 3, 2, 1, "features.pool0")
    for i, n in enumerate(blocks, start=1):
        feats = [x]
        for j in range(1, n + 1):
            p = f"features.denseblock{i}.denselayer{j}"
            y = b.concat(feats, f"{p}.concat")  # torch.cat(inputs, 1) in bn_function
            y = b.act_t(b.bn(y, f"{p}.norm1"), "relu", f"{p}.relu1")
            y = b.conv(y, bn_size * growth, 1, name=f"{p}.conv1")
            y = b.act_t(b.bn(y, f"{p}.norm2"), "relu", f"{p}.relu2")
            feats.append(b.conv(y, growth, 3, name=f"{p}.conv2"))
        x = b.concat(feats, f"features.denseblock{i}.concat")
        if i < len(blocks):
            p = f"features.transition{i}"
            x = b.act_t(b.bn(x, f"{p}.norm"), "relu", f"{p}.relu")
            x = b.conv(x, x.c // 2, 1, name=f"{p}.conv")
            x = b.avgpool(x, 2, 2, 0, f"{p}.pool")
    x = b.act_t(b.bn(x, "features.norm5"), "relu", "features.relu5")
    return b.build(b.classifier(x, fc="classifier"))


# ====================================================================== RegNet
def _regnet_params(
    depth: int, w_0: int, w_a: float, w_m: float, group_width: int
) -> list[tuple[int, int, int]]:
    """torchvision ``BlockParams.from_init_params`` (bottleneck multiplier 1): [(width, depth, groups)]."""
    widths_cont = np.arange(depth) * w_a + w_0
    capacity = np.round(np.log(widths_cont / w_0) / math.log(w_m))
    widths = [int(v) for v in np.round(w_0 * np.power(w_m, capacity) / 8) * 8]
    stages: list[list[int]] = []
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        g = min(group_width, w)
        w = _make_divisible(w, g)
        out.append((w, d, w // g))
    return out


def _regnet(
    arch: str,
    depth: int,
    w_0: int,
    w_a: float,
    w_m: float,
    group_width: int,
    *,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv_bn_act(b.input, 32, 3, 2, prefix="stem")
    for i, (w, d, groups) in enumerate(_regnet_params(depth, w_0, w_a, w_m, group_width), start=1):
        for j in range(d):
            p = f"trunk_output.block{i}.block{i}-{j}"
            stride = 2 if j == 0 else 1
            shortcut = x
            if stride != 1 or x.c != w:
                shortcut = b.conv_bn_act(x, w, 1, stride, prefix=f"{p}.proj", act=None)
            y = b.conv_bn_act(x, w, 1, prefix=f"{p}.f.a")
            y = b.conv_bn_act(y, w, 3, stride, prefix=f"{p}.f.b", groups=groups)
            y = b.conv_bn_act(y, w, 1, prefix=f"{p}.f.c", act=None)
            x = b.act_t(b.add(shortcut, y, f"{p}.add"), "relu", f"{p}.activation")
    return b.build(b.classifier(x))


# ====================================================================== ConvNeXt
def _convnext(
    arch: str,
    depths: Sequence[int],
    dims: Sequence[int],
    *,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.layer_norm2d(b.conv(b.input, dims[0], 4, 4, name="stem.conv", pad=0, bias=True), "stem.norm")
    for i, (d, dim) in enumerate(zip(depths, dims, strict=True)):
        if i > 0:
            x = b.layer_norm2d(x, f"stages.{i}.downsample.norm")
            x = b.conv(x, dim, 2, 2, name=f"stages.{i}.downsample.conv", pad=0, bias=True)
        for j in range(d):
            p = f"stages.{i}.blocks.{j}"
            y = b.conv(x, dim, 7, name=f"{p}.dwconv", groups=dim, bias=True)
            t = b.node("Transpose", [y.name], f"{p}.to_nhwc", perm=[0, 2, 3, 1])
            t = b.layer_norm(t, dim, f"{p}.norm")
            t = b.mlp(t, x.h * x.w, dim, 4 * dim, p, ("pwconv1", "pwconv2"))
            t = b.node("Transpose", [t], f"{p}.to_nchw", perm=[0, 3, 1, 2])
            gamma = b.tensor(f"{p}.layer_scale", np.full((dim, 1, 1), 1e-6, dtype=np.float32))
            y = _T(b.node("Mul", [t, gamma], f"{p}.layer_scale.mul"), dim, x.h, x.w)
            x = b.add(x, y, f"{p}.add")
    pooled = b.layer_norm2d(b.global_pool(x, "avgpool"), "classifier.norm")
    f = b.node("Flatten", [pooled.name], "classifier.flatten", axis=1)
    return b.build(b.gemm(f, x.c, num_classes, "classifier.fc", out="logits"))


# ====================================================================== Vision Transformer
def _vit(
    arch: str,
    dim: int,
    depth: int,
    heads: int,
    *,
    patch: int = 16,
    batch: int = 1,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
) -> onnx.ModelProto:
    b = _Builder(arch, batch=batch, image_size=image_size, num_classes=num_classes, seed=seed)
    x = b.conv(b.input, dim, patch, patch, name="patch_embed.proj", pad=0, bias=True)
    n = x.h * x.w
    t = b.node("Reshape", [x.name, b.ints([batch, dim, n])], "patch_embed.flatten")
    t = b.node("Transpose", [t], "patch_embed.transpose", perm=[0, 2, 1])
    cls = b.normal("cls_token", (1, 1, dim), 0.02)
    cls = b.node("Expand", [cls, b.ints([batch, 1, dim])], "cls_token.expand")
    t = b.node("Concat", [cls, t], "cls_token.concat", axis=1)
    t = b.node("Add", [t, b.normal("pos_embed", (1, n + 1, dim), 0.02)], "pos_embed.add")
    for i in range(depth):
        t = b.transformer_block(t, n + 1, dim, heads, f"blocks.{i}")
    t = b.layer_norm(t, dim, "norm")
    c = b.node("Gather", [t, b.const(0, np.int64)], "cls_select", axis=1)
    return b.build(b.gemm(c, dim, num_classes, "head", out="logits"))


# ====================================================================== registry
ARCHITECTURES: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": partial(_resnet, "resnet18", "basic", (2, 2, 2, 2)),
    "resnet34": partial(_resnet, "resnet34", "basic", (3, 4, 6, 3)),
    "resnet50": partial(_resnet, "resnet50", "bottleneck", (3, 4, 6, 3)),
    "resnet101": partial(_resnet, "resnet101", "bottleneck", (3, 4, 23, 3)),
    "resnext50_32x4d": partial(
        _resnet, "resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4
    ),
    "wide_resnet50_2": partial(_resnet, "wide_resnet50_2", "bottleneck", (3, 4, 6, 3), width_per_group=128),
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": partial(_mobilenet_v3, "mobilenet_v3_small", _MBV3_SMALL, 1024),
    "mobilenet_v3_large": partial(_mobilenet_v3, "mobilenet_v3_large", _MBV3_LARGE, 1280),
    "efficientnet_b0": partial(_efficientnet, "efficientnet_b0", 1.0, 1.0),
    "efficientnet_b1": partial(_efficientnet, "efficientnet_b1", 1.0, 1.1),
    "efficientnet_b2": partial(_efficientnet, "efficientnet_b2", 1.1, 1.2),
    "efficientnet_b3": partial(_efficientnet, "efficientnet_b3", 1.2, 1.4),
    "mnasnet1_0": mnasnet1_0,
    "shufflenet_v2_x1_0": shufflenet_v2,
    "squeezenet1_1": squeezenet1_1,
    "vgg11": partial(_vgg, "vgg11"),
    "vgg16": partial(_vgg, "vgg16"),
    "alexnet": alexnet,
    "densenet121": densenet121,
    "regnet_x_400mf": partial(_regnet, "regnet_x_400mf", 22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": partial(_regnet, "regnet_x_800mf", 16, 56, 35.73, 2.28, 16),
    "convnext_tiny": partial(_convnext, "convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
    "vit_tiny": partial(_vit, "vit_tiny", 192, 12, 3),
    "vit_small": partial(_vit, "vit_small", 384, 12, 6),
    "vit_base_depth6": partial(_vit, "vit_base_depth6", 768, 6, 12),
}


def build_model(name: str, **kwargs: object) -> onnx.ModelProto:
    """Build architecture ``name`` (a key of :data:`ARCHITECTURES`) with the given keyword arguments."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return builder(**kwargs)


def model_stats(model: onnx.ModelProto) -> tuple[int, int]:
    """(trainable parameter count, multiply-accumulates) recorded by the builder in the model metadata."""
    props = {p.key: p.value for p in model.metadata_props}
    return int(props.get("params", 0)), int(props.get("macs", 0))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the latpred architecture zoo as ONNX files.")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--names", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()] or list(ARCHITECTURES)
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architectures: {', '.join(unknown)}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = build_model(name, batch=args.batch, image_size=args.image_size, num_classes=args.num_classes)
        path = args.outdir / f"{name}.onnx"
        onnx.save(model, path)
        params, macs = model_stats(model)
        nodes = len(model.graph.node)
        print(f"{name:<22} params={params / 1e6:8.2f}M  MACs={macs / 1e9:7.3f}G  nodes={nodes:5d}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
