"""Write the op-space priors: skeletons of public architectures (benchmarks/zoo.py) into data/priors/.

    .venv/bin/python benchmarks/make_priors.py

The profiler samples kernels from these first (layer shapes that occur in real models). Architectures
listed in HELD_OUT are deliberately left out so the accuracy benchmark can show how the predictor does
on architectures whose layers were never profiled as such.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402  (a script's own folder is on sys.path when it runs)

from profiler.skeleton import model_to_skeleton  # noqa: E402

# (architecture, image sizes) in profiling priority order: common CNN and ViT families first.
PRIORS: list[tuple[str, list[int]]] = [
    ("mobilenet_v2", [224, 160]),
    ("resnet18", [224, 160]),
    ("resnet50", [224]),
    ("efficientnet_b0", [224]),
    ("vit_tiny", [224]),
    ("mobilenet_v3_large", [224, 160]),
    ("shufflenet_v2_x1_0", [224]),
    ("regnet_x_400mf", [224]),
    ("squeezenet1_1", [224]),
    ("densenet121", [224]),
    ("resnext50_32x4d", [224]),
    ("convnext_tiny", [224]),
    ("vit_small", [224]),
    ("efficientnet_b2", [224]),
    ("vgg11", [224]),
]
HELD_OUT = sorted(set(zoo.ARCHITECTURES) - {name for name, _ in PRIORS})


def main() -> None:
    out = ROOT / "data" / "priors"
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for priority, (name, sizes) in enumerate(PRIORS):
        for size in sizes:
            model = zoo.build_model(name, image_size=size)
            skeleton = model_to_skeleton(model, f"{name}_{size}")
            path = out / f"{name}_{size}.json"
            path.write_text(json.dumps(skeleton, separators=(",", ":")))
            index.append({"file": path.name, "architecture": name, "image_size": size, "priority": priority})
            print(f"{path.relative_to(ROOT)}: {len(skeleton['nodes'])} nodes")
    (out / "index.json").write_text(json.dumps({"priors": index, "held_out": HELD_OUT}, indent=1))


if __name__ == "__main__":
    main()
