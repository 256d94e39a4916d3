"""The validation zoo: ONNX files that other tools wrote, for the accuracy benchmark and the tests.

Runs in the benchmark environment, never in latpred's own (torch, torchvision, transformers, torch-pruning and
onnxscript are not latpred dependencies):

    python3.11 -m venv /work/benchvenv/venv
    /work/benchvenv/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers timm torch-pruning \
        onnxscript onnx onnxruntime
    /work/benchvenv/venv/bin/python -m benchmarks.real_exports --out benchmarks/out/real
    /work/benchvenv/venv/bin/python -m benchmarks.real_exports --set unseen --out benchmarks/out/unseen

Every model is built from its library's own config with random weights (nothing is downloaded) and written by:
- `torch.onnx.export`, the TorchScript exporter (`dynamo=False`, opset 17) or the dynamo exporter (`dynamo=True`,
  weights in a `.onnx.data` file beside the model);
- onnxruntime's quantizers: `quantize_static` (QDQ, calibrated on random inputs), `quantize_dynamic`
  (MatMulInteger) and `MatMulNBitsQuantizer` (int4 weight-only);
- torch-pruning (magnitude importance, structured), then exported, and for "pruned then int8" quantized.

The unseen set (`--set unseen`) holds files the bench set does not have, most of them of architectures or shapes
the profiler's priors lack too.
`manifest.json` lists each file with its family, what made it, its input shapes and the group its variants rank
in. This module imports nothing of latpred: the files are what a user would bring.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("real_exports")

OPSET = 17


@dataclass
class Entry:
    """One file of the zoo and how it is made."""

    name: str
    family: str  # "cnn", "vit", "text"
    build: str  # the model builder's name (BUILDERS)
    exporter: str = "torchscript"  # "torchscript" or "dynamo"
    batch: int = 1
    size: int = 224  # image side, or sequence length for text models
    compression: str = "fp32"  # fp32, qdq, qdq_u8_per_channel, dynamic_int8, int4, prune30, prune50, prune30+qdq...
    group: str = ""  # variants of one base model rank against each other
    dynamic_batch: bool = False  # the batch axis exported as a symbolic dimension (`dynamic_axes`)
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


# ------------------------------------------------------------------------------------------------ model builders
def _torchvision(arch: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, **kwargs).eval()

    return build


def _hf_text(kind: str, **overrides: Any) -> Callable[[], Any]:
    """A Hugging Face text model from its default config (random init), returning its last hidden state / logits."""
    def build() -> Any:
        import torch
        import transformers

        config_cls, model_cls = {
            "bert": (transformers.BertConfig, transformers.BertModel),
            "distilbert": (transformers.DistilBertConfig, transformers.DistilBertModel),
            "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
            "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
            "t5_encoder": (transformers.T5Config, transformers.T5EncoderModel),
            "albert": (transformers.AlbertConfig, transformers.AlbertModel),
            "electra": (transformers.ElectraConfig, transformers.ElectraModel),
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "opt": (transformers.OPTConfig, transformers.OPTForCausalLM),
            "bart_encoder": (transformers.BartConfig, transformers.BartModel),
        }[kind]
        config = config_cls(**overrides)
        if hasattr(config, "use_cache"):
            config.use_cache = False
        torch.manual_seed(0)
        model = model_cls(config).eval()
        if kind == "bart_encoder":
            model = model.get_encoder()

        class Wrapper(torch.nn.Module):
            """input_ids in, the model's first output out (what a user exports for latency)."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any) -> Any:
                out = self.model(input_ids=input_ids, return_dict=True)
                return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state

        return Wrapper().eval()

    return build


def _hf_vit(**overrides: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torch
        import transformers

        torch.manual_seed(0)
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**overrides)).eval()

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: Any) -> Any:
                return self.model(pixel_values=pixel_values, return_dict=True).logits

        return Wrapper().eval()

    return build


BUILDERS: dict[str, Callable[[], Any]] = {
    **{arch: _torchvision(arch) for arch in [
        "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "efficientnet_b0", "efficientnet_b1", "regnet_y_400mf", "regnet_x_800mf", "convnext_tiny", "densenet121",
        "squeezenet1_1", "shufflenet_v2_x1_0", "mnasnet1_0", "googlenet", "vgg11", "resnext50_32x4d",
        "wide_resnet50_2", "vit_b_16", "swin_t", "efficientnet_v2_s",
    ]},
    "googlenet": _torchvision("googlenet", aux_logits=False, init_weights=True),
    "bert": _hf_text("bert"),
    "bert_small": _hf_text("bert", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                           intermediate_size=2048),
    "distilbert": _hf_text("distilbert"),
    "roberta": _hf_text("roberta"),
    "gpt2": _hf_text("gpt2"),
    "gpt2_small": _hf_text("gpt2", n_layer=4, n_embd=512, n_head=8),
    "t5_encoder": _hf_text("t5_encoder", num_layers=6, d_model=512, d_ff=2048, num_heads=8),
    # Architectures of the unseen set only (unseen_zoo).
    "albert": _hf_text("albert", hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                       embedding_size=128),
    "electra": _hf_text("electra"),
    "llama": _hf_text("llama", vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512),
    "opt": _hf_text("opt", vocab_size=8000, hidden_size=512, ffn_dim=2048, num_hidden_layers=4, num_attention_heads=8,
                    word_embed_proj_dim=512),
    "bart_encoder": _hf_text("bart_encoder", vocab_size=8000, d_model=512, encoder_layers=4, decoder_layers=1,
                             encoder_attention_heads=8, encoder_ffn_dim=2048),
    "hf_vit": _hf_vit(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    # Small models for the test suite's committed files (tests/data/real).
    "tiny_mobilenet_v2": _torchvision("mobilenet_v2", width_mult=0.25, num_classes=10),
    "tiny_resnet18": _torchvision("resnet18", num_classes=10),
    "tiny_bert": _hf_text("bert", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=128),
    "tiny_gpt2": _hf_text("gpt2", vocab_size=512, n_layer=2, n_embd=64, n_head=2, n_positions=128),
}


# -------------------------------------------------------------------------------------------------------- the zoo
def _fp32(name: str, family: str, build: str, **kwargs: Any) -> Entry:
    return Entry(name=name, family=family, build=build, group=kwargs.pop("group", name), **kwargs)


def default_zoo() -> list[Entry]:
    """The benchmark's zoo: fp32 exports through both exporters, other shapes, and compressed files."""
    entries: list[Entry] = []
    cnns = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "regnet_y_400mf", "convnext_tiny", "densenet121", "squeezenet1_1", "shufflenet_v2_x1_0", "mnasnet1_0",
            "googlenet", "resnext50_32x4d", "efficientnet_b1", "regnet_x_800mf", "resnet34", "vgg11"]
    for arch in cnns:
        entries.append(_fp32(arch, "cnn", arch))
    for arch in ["vit_b_16", "swin_t"]:
        entries.append(_fp32(arch, "vit", arch))
    entries.append(_fp32("hf_vit", "vit", "hf_vit"))
    # The dynamo exporter (weights in external data).
    for arch, family in [("resnet18", "cnn"), ("mobilenet_v2", "cnn"), ("efficientnet_b0", "cnn"),
                         ("convnext_tiny", "cnn"), ("vit_b_16", "vit")]:
        entries.append(_fp32(f"{arch}_dynamo", family, arch, exporter="dynamo", group=f"{arch}_dynamo"))
    # Text models (int64 input_ids, sequence length 128).
    # GPT-2 under transformers 5 exports with the dynamo exporter only (its masks use aten::diff).
    for arch in ["bert", "bert_small", "distilbert", "roberta", "t5_encoder"]:
        entries.append(_fp32(arch, "text", arch, size=128))
    for arch in ["gpt2", "gpt2_small"]:
        entries.append(_fp32(arch, "text", arch, size=128, exporter="dynamo"))
    entries.append(_fp32("bert_small_dynamo", "text", "bert_small", size=128, exporter="dynamo",
                         group="bert_small_dynamo"))
    # Batch > 1 and other sizes.
    entries += [
        _fp32("resnet18_b4", "cnn", "resnet18", batch=4, group="resnet18_b4"),
        _fp32("mobilenet_v2_160", "cnn", "mobilenet_v2", size=160, group="mobilenet_v2_160"),
        _fp32("efficientnet_b0_256", "cnn", "efficientnet_b0", size=256, group="efficientnet_b0_256"),
        _fp32("resnet50_b2_192", "cnn", "resnet50", batch=2, size=192, group="resnet50_b2_192"),
        _fp32("mobilenet_v3_large_b8_96", "cnn", "mobilenet_v3_large", batch=8, size=96,
              group="mobilenet_v3_large_b8_96"),
        _fp32("bert_small_b4_s64", "text", "bert_small", batch=4, size=64, group="bert_small_b4_s64"),
        _fp32("distilbert_s256", "text", "distilbert", size=256, group="distilbert_s256"),
        _fp32("gpt2_small_b2_s32", "text", "gpt2_small", batch=2, size=32, exporter="dynamo",
              group="gpt2_small_b2_s32"),
    ]
    # Text and ViT exports at other shapes, for the priors only (the TorchScript exporter bakes the sequence length
    # and batch of Hugging Face models into the graph: each shape is an export of its own).
    entries += [
        _fp32("prior_bert_s32", "text", "bert", size=32), _fp32("prior_bert_s256", "text", "bert", size=256),
        _fp32("prior_bert_b2_s64", "text", "bert", size=64, batch=2),
        _fp32("prior_distilbert_b4_s32", "text", "distilbert", size=32, batch=4),
        _fp32("prior_gpt2_s64", "text", "gpt2", size=64, exporter="dynamo"),
        _fp32("prior_gpt2_b2_s256", "text", "gpt2", size=256, batch=2, exporter="dynamo"),
        _fp32("prior_vit_b_16_b2", "vit", "vit_b_16", batch=2),
    ]
    # Compressed by onnxruntime's quantizers and torch-pruning, each beside its fp32 base (same group).
    for arch in ["resnet18", "mobilenet_v2", "efficientnet_b0", "resnet50", "mobilenet_v3_large", "regnet_y_400mf"]:
        entries.append(Entry(f"{arch}_qdq", "cnn", arch, compression="qdq", group=arch))
    for arch in ["convnext_tiny", "mobilenet_v2", "resnet18", "efficientnet_b0"]:
        entries.append(Entry(f"{arch}_qdq_u8pc", "cnn", arch, compression="qdq_u8_per_channel", group=arch))
    for arch, ratio in [("resnet18", 30), ("resnet18", 50), ("mobilenet_v2", 30), ("mobilenet_v2", 50),
                        ("resnet50", 30), ("efficientnet_b0", 30), ("mobilenet_v3_large", 50),
                        ("convnext_tiny", 30), ("regnet_y_400mf", 30)]:
        entries.append(Entry(f"{arch}_prune{ratio}", "cnn", arch, compression=f"prune{ratio}", group=arch))
    for arch, ratio in [("resnet18", 30), ("mobilenet_v2", 50), ("resnet50", 30), ("efficientnet_b0", 30)]:
        entries.append(Entry(f"{arch}_prune{ratio}_qdq", "cnn", arch, compression=f"prune{ratio}+qdq", group=arch))
    entries.append(Entry("vit_b_16_qdq", "vit", "vit_b_16", compression="qdq", group="vit_b_16"))
    entries.append(Entry("vit_b_16_dynamic_int8", "vit", "vit_b_16", compression="dynamic_int8", group="vit_b_16"))
    for arch in ["bert", "bert_small", "distilbert", "gpt2_small", "t5_encoder"]:
        exporter = "dynamo" if arch.startswith("gpt2") else "torchscript"
        entries.append(Entry(f"{arch}_dynamic_int8", "text", arch, size=128, compression="dynamic_int8", group=arch,
                             exporter=exporter))
    for arch in ["bert", "bert_small", "gpt2_small"]:
        exporter = "dynamo" if arch.startswith("gpt2") else "torchscript"
        entries.append(Entry(f"{arch}_int4", "text", arch, size=128, compression="int4", group=arch,
                             exporter=exporter))
    entries.append(Entry("bert_small_qdq", "text", "bert_small", size=128, compression="qdq", group="bert_small"))
    entries.append(Entry("vit_b_16_int4", "vit", "vit_b_16", compression="int4", group="vit_b_16"))
    return entries


def unseen_zoo() -> list[Entry]:
    """Files the accuracy work was not tuned on, for `benchmarks.accuracy --zoo` like the bench set: none is in
    default_zoo. Llama and OPT decoders, ALBERT, ELECTRA and a BART encoder (architectures the priors lack), CNNs at
    other batch sizes and sizes, and files of other tools. A few are what a profile measures too (MobileNetV2 at
    batch 4, RegNet-Y-400MF at batch 8 and 128 px, DistilBERT in int4)."""
    return [
        _fp32("wide_resnet50_2", "cnn", "wide_resnet50_2"),
        _fp32("efficientnet_v2_s_256", "cnn", "efficientnet_v2_s", size=256),
        _fp32("resnet34_b2_160", "cnn", "resnet34", batch=2, size=160),
        _fp32("mobilenet_v2_b4", "cnn", "mobilenet_v2", batch=4),
        _fp32("densenet121_b2_192", "cnn", "densenet121", batch=2, size=192),
        _fp32("convnext_tiny_b2", "cnn", "convnext_tiny", batch=2),
        _fp32("regnet_y_400mf_b8_128", "cnn", "regnet_y_400mf", batch=8, size=128),
        _fp32("resnet34_qdq", "cnn", "resnet34", compression="qdq"),
        _fp32("mobilenet_v3_small_qdq_u8pc", "cnn", "mobilenet_v3_small", compression="qdq_u8_per_channel"),
        _fp32("resnet34_prune30", "cnn", "resnet34", compression="prune30"),
        _fp32("albert", "text", "albert", size=128),
        _fp32("electra_s64", "text", "electra", size=64),
        # Llama under transformers 5 exports with the dynamo exporter only (its masks use aten::diff).
        _fp32("llama", "text", "llama", size=128, exporter="dynamo"),
        _fp32("llama_dynamic_int8", "text", "llama", size=128, exporter="dynamo", compression="dynamic_int8",
            group="llama"),
        _fp32("opt", "text", "opt", size=128),
        _fp32("opt_int4", "text", "opt", size=128, compression="int4", group="opt"),
        _fp32("bart_encoder_b2_s64", "text", "bart_encoder", batch=2, size=64),
        _fp32("distilbert_int4", "text", "distilbert", size=128, compression="int4"),
        _fp32("roberta_dynamic_int8", "text", "roberta", size=128, compression="dynamic_int8"),
    ]


def test_zoo() -> list[Entry]:
    """Small real exports the test suite keeps as files (tests/data/real): each well under a megabyte or two."""
    return [
        Entry("tiny_mobilenet_v2", "cnn", "tiny_mobilenet_v2", size=96, dynamic_batch=True),
        Entry("tiny_mobilenet_v2_dynamo", "cnn", "tiny_mobilenet_v2", size=96, exporter="dynamo"),
        Entry("tiny_mobilenet_v2_qdq", "cnn", "tiny_mobilenet_v2", size=96, compression="qdq"),
        Entry("tiny_mobilenet_v2_qdq_u8pc", "cnn", "tiny_mobilenet_v2", size=96, compression="qdq_u8_per_channel"),
        Entry("tiny_mobilenet_v2_prune50", "cnn", "tiny_mobilenet_v2", size=96, compression="prune50"),
        Entry("tiny_mobilenet_v2_prune50_qdq", "cnn", "tiny_mobilenet_v2", size=96, compression="prune50+qdq"),
        Entry("tiny_resnet18_prune88", "cnn", "tiny_resnet18", size=64, compression="prune88"),
        Entry("tiny_bert", "text", "tiny_bert", size=32),
        Entry("tiny_bert_dynamic_int8", "text", "tiny_bert", size=32, compression="dynamic_int8"),
        Entry("tiny_bert_int4", "text", "tiny_bert", size=32, compression="int4"),
        Entry("tiny_gpt2_dynamo", "text", "tiny_gpt2", size=32, exporter="dynamo"),
    ]


# ------------------------------------------------------------------------------------------------------ exporting
def _example_inputs(entry: Entry) -> tuple[Any, list[str]]:
    import torch

    if entry.family == "text":
        generator = torch.Generator().manual_seed(0)
        return (torch.randint(0, 500, (entry.batch, entry.size), generator=generator),), ["input_ids"]
    name = "pixel_values" if entry.build == "hf_vit" else "input"
    return (torch.randn(entry.batch, 3, entry.size, entry.size),), [name]


def _prune(model: Any, entry: Entry, ratio: float) -> Any:
    """torch-pruning's magnitude pruner, one shot, as its README shows it (the classifier left whole)."""
    import torch
    import torch_pruning as tp

    example, _ = _example_inputs(entry)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features in (10, 1000)]
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=ignored, round_to=None,
    )
    pruner.step()
    return model


def _export(model: Any, entry: Entry, path: Path) -> None:
    import torch

    example, names = _example_inputs(entry)
    # torch's fused attention fast path (eval, no grad) has no ONNX export; users turn it off to export.
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if entry.exporter == "dynamo":
            program = torch.onnx.export(model, example, dynamo=True, input_names=names, output_names=["output"],
                                        external_data=True)
            program.save(str(path), external_data=True)
        else:
            dynamic_axes = {names[0]: {0: "batch"}, "output": {0: "batch"}} if entry.dynamic_batch else None
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=["output"], dynamic_axes=dynamic_axes)


class _RandomReader:
    """Calibration data for quantize_static: a few random batches of the model's own input shapes."""

    def __init__(self, model_path: Path, samples: int = 4) -> None:
        import numpy as np
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
        rng = np.random.default_rng(0)
        self._feeds = []
        for _ in range(samples):
            feed = {}
            for value in model.graph.input:
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
                    feed[value.name] = rng.integers(0, 500, dims).astype(np.int64)
                else:
                    feed[value.name] = rng.standard_normal(dims).astype(np.float32)
            self._feeds.append(feed)
        self._iterator = iter(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)


def _quantize(source: Path, target: Path, compression: str) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if compression == "qdq":
        # quantize_static as its documentation's first example calls it: its defaults (QDQ, int8 activations and
        # weights, one scale per tensor).
        quantize_static(str(source), str(target), _RandomReader(source))
    elif compression == "qdq_u8_per_channel":
        # As onnxruntime recommends on x86: uint8 activations, per-channel weights, after its pre-processing.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = source.with_suffix(".pre.onnx")
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), _RandomReader(prepared), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    elif compression == "dynamic_int8":
        quantize_dynamic(str(source), str(target))
    elif compression == "int4":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(source))
        quantizer = MatMulNBitsQuantizer(model)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    else:
        raise ValueError(f"unknown quantization {compression!r}")


def build_entry(entry: Entry, out: Path, scratch: Path) -> dict[str, Any]:
    """Write one zoo file; returns its manifest record."""
    import torch

    torch.manual_seed(0)
    model = BUILDERS[entry.build]()
    steps = entry.compression.split("+")
    prune = next((s for s in steps if s.startswith("prune")), None)
    quantization = next((s for s in steps if not s.startswith("prune") and s != "fp32"), None)
    if prune is not None:
        model = _prune(model, entry, int(prune.removeprefix("prune")) / 100)
    target = out / entry.file
    if quantization is None:
        _export(model, entry, target)
    else:
        float_path = scratch / f"{entry.name}.float.onnx"
        _export(model, entry, float_path)
        _quantize(float_path, target, quantization)
    _, names = _example_inputs(entry)
    batch: int | str = "batch" if entry.dynamic_batch else entry.batch
    shape = [batch, entry.size] if entry.family == "text" else [batch, 3, entry.size, entry.size]
    files = [entry.file] + ([entry.file + ".data"] if (out / (entry.file + ".data")).exists() else [])
    record = {**asdict(entry), "file": entry.file, "files": files, "input_shapes": {names[0]: shape},
              "bytes": sum((out / f).stat().st_size for f in files)}
    record.pop("kwargs")
    return record


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torchvision
    import transformers

    found = {"torch": torch.__version__, "torchvision": torchvision.__version__,
             "transformers": transformers.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__}
    try:
        import torch_pruning

        found["torch_pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/real"))
    parser.add_argument("--set", choices=["bench", "unseen", "tests"], default="bench", help="which zoo to write")
    parser.add_argument("--only", nargs="*", help="names of entries to (re)build")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--force", action="store_true", help="rebuild files that exist")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    entries = {"bench": default_zoo, "unseen": unseen_zoo, "tests": test_zoo}[args.set]()
    if args.list:
        for entry in entries:
            print(f"{entry.name:34s} {entry.family:5s} {entry.exporter:11s} {entry.compression}")
        return 0
    selected = [e for e in entries if not args.only or e.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / ".scratch"
    scratch.mkdir(exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": []}
    records = {record["name"]: record for record in manifest["models"]}
    failures = []
    torch_threads = int(os.environ.get("REAL_EXPORTS_THREADS", "2"))
    import torch

    torch.set_num_threads(torch_threads)
    # onnxruntime's quantizers leave "<uuid>.data" files in the working directory for large models: work in scratch.
    os.chdir(scratch)
    for index, entry in enumerate(selected, 1):
        if entry.name in records and (args.out / entry.file).exists() and not args.force:
            continue
        started = time.monotonic()
        try:
            records[entry.name] = build_entry(entry, args.out, scratch)
        except Exception as exc:  # noqa: BLE001 - report every failing entry, build the rest
            failures.append(entry.name)
            logger.error("[%d/%d] %s FAILED: %s", index, len(selected), entry.name, " ".join(str(exc).split())[:400])
            continue
        logger.info("[%d/%d] %s (%.0f s)", index, len(selected), entry.name, time.monotonic() - started)
        manifest = {"versions": versions(), "models": [records[e.name] for e in entries if e.name in records]}
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    os.chdir(args.out)
    shutil.rmtree(scratch)
    if failures:
        logger.error("failed: %s", ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
