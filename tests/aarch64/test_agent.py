"""An aarch64 device agent, functionally: onnxruntime 1.24 on an emulated Cortex-A72 (qemu-user) profiles a real export
into a `latpred serve` on this x86 host, and the service predicts with exactly the kernels the device runs.

Timings under emulation mean nothing: this tests identity and flow. tests/aarch64/build_env.sh builds the aarch64
Python (Debian's python3.11 for arm64, aarch64 wheels); `make test` runs it first, and the test skips, saying why,
where it could not.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.served import AUTH, serve

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "data" / "real"
ENV_DIR = Path(os.environ.get("LATPRED_AARCH64_DIR", Path.home() / ".cache" / "latpred-aarch64"))
# The Raspberry Pi 4's core (NEON, no SVE): about 1.7 s per inference of a 96x96 ResNet-18 here.
QEMU_CPU = "cortex-a72"
BUDGET_MINUTES = 5

pytestmark = [pytest.mark.slow, pytest.mark.aarch64]


def _environment() -> Path:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-user-static is not installed (tests/aarch64/build_env.sh installs it)")
    if not (ENV_DIR / ".ready").is_file():
        pytest.skip(f"no aarch64 environment at {ENV_DIR}: run tests/aarch64/build_env.sh (make test does)")
    return ENV_DIR


def on_aarch64(env_dir: Path, *args: str, home: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`latpred ARGS` on the emulated aarch64 CPU, from this checkout, with aarch64 wheels (qemu-user hands the
    environment to the emulated process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATPRED_", "PYTHON"))}
    env.update(LATPRED_HOME=str(home), PYTHONPATH=f"{ROOT}:{env_dir / 'site'}")
    command = ["qemu-aarch64-static", "-cpu", QEMU_CPU, "-L", str(env_dir / "rootfs"),
               str(env_dir / "rootfs" / "usr" / "bin" / "python3.11"), "-m", "service.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=home)


def kernel_hashes(document: dict) -> list[str]:
    return [kernel["key_hash"] for kernel in document["kernels"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("aarch64-served")
    with serve(root, f"sqlite:///{root / 'store.db'}") as server:
        yield server


def test_an_arm_agent_profiles_into_the_service_which_predicts_with_the_devices_kernels(
        served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env_dir = _environment()
    profiled, unseen = tmp_path / "small.onnx", tmp_path / "unseen.onnx"
    shutil.copy(REAL / "tiny_resnet18_prune88.onnx", profiled)
    shutil.copy(REAL / "tiny_mobilenet_v2_prune50.onnx", unseen)
    home = tmp_path / "agent-home"
    home.mkdir()

    started = time.monotonic()
    agent = on_aarch64(env_dir, "profile", "--device", "arm", "--for-model", str(profiled), "--to", served.url,
                       "--token", AUTH["Authorization"].split()[1], "--budget-minutes", str(BUDGET_MINUTES),
                       home=home, timeout_s=25 * 60)
    agent_minutes = (time.monotonic() - started) / 60
    assert agent.returncode == 0, agent.stderr[-3000:]
    assert agent_minutes < 25, f"the agent took {agent_minutes:.1f} min on a {BUDGET_MINUTES}-minute budget"

    with served.client() as client:
        device = client.get("/api/devices/arm").json()
        profile = device["kernel_profile"]
        assert profile["machine"] == "aarch64" and profile["nchwc_block"] == 0
        assert profile["runtime_version"].startswith("1.24")
        assert device["runs"] and device["runs"][0]["runtime"]["runtime_version"].startswith("1.24")
        assert device["measurement_count"] > 0

        for model, must_hit in ((profiled, True), (unseen, False)):
            on_device = on_aarch64(env_dir, "kernels", str(model), "--json", home=home, timeout_s=600)
            assert on_device.returncode == 0, on_device.stderr[-2000:]
            device_kernels = json.loads(on_device.stdout)
            with model.open("rb") as handle:
                uploaded = client.post("/api/models", files={"file": (model.name, handle)})
            assert uploaded.status_code in (200, 201), uploaded.text
            answer = client.post("/api/predict", json={"device": "arm", "model_id": uploaded.json()["id"]})
            assert answer.status_code == 200, answer.text
            prediction = answer.json()
            # Exactly the device's kernels: the service built them as onnxruntime 1.24 on aarch64 does (no NCHWc).
            assert Counter(kernel_hashes(prediction)) == Counter(kernel_hashes(device_kernels)), model.name
            assert not any(k["op_type"].startswith("Nchwc") for k in prediction["kernels"])
            if must_hit:
                assert prediction["table_hit_rate"] >= 0.95

        # This host's own kernels of the same model are NCHWc ones: a prediction with them would have been silently
        # another device's.
        local = subprocess.run([sys.executable, "-m", "service.cli", "kernels", str(profiled), "--json"],
                               capture_output=True, text=True, timeout=300)
        assert local.returncode == 0, local.stderr
        assert Counter(kernel_hashes(json.loads(local.stdout))) != Counter(kernel_hashes(device_kernels))
