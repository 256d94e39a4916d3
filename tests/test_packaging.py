"""The install a user gets: the Dockerfile's build steps in a fresh venv (a non-editable install of what the image
copies), `latpred demo`, `profile` and `serve` from an empty directory, and the compose file's deployment.

No Docker engine runs here, so the image's commands run in a fresh virtual environment instead. Its third-party
dependencies come from the test environment's site-packages (a path file), so the test needs no network: latpred
itself is installed from the copied sources only, never from this checkout.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def user_env(home: Path) -> dict[str, str]:
    """A new user's environment: no LATPRED_* settings, a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_") and k != "XDG_DATA_HOME"}
    env.update(HOME=str(home), PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding latpred the way the image installs it; returns the venv's bin directory."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    context.mkdir()
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY":
            *sources, _destination = arguments.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"the Dockerfile copies {source}, which the repository lacks"
                if path.is_dir():
                    shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, context / source)
    environment = work / "venv"
    venv.create(environment, with_pip=True)
    site = Path(subprocess.check_output(
        [environment / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The new venv's bundled setuptools would shadow the build requirement (pyproject.toml's) that the test
    # environment holds.
    subprocess.run([environment / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"],
                   check=True, capture_output=True)
    installs = [arguments for instruction, arguments in dockerfile_instructions()
                if instruction == "RUN" and "pip install" in arguments]
    assert len(installs) == 1, "the Dockerfile installs latpred with one pip install"
    command = shlex.split(installs[0].split("&&")[0])
    assert command[:2] == ["pip", "install"]
    # The image's own command, with the dependencies already present and no download of build requirements.
    subprocess.run([str(environment / "bin" / "python"), "-m", *command, "--no-deps", "--no-build-isolation",
                    "--quiet"], cwd=context, check=True, env=user_env(work))
    return environment / "bin"


def test_the_install_comes_from_the_copied_sources_not_the_checkout(image: Path, tmp_path: Path) -> None:
    code = ("import predictor, profiler.plan, predictor.runtime.devices; "
            "print(predictor.__file__); print(profiler.plan.DEFAULT_PRIORS_DIR); "
            "print(predictor.runtime.devices.DEFAULT_PROBES_DIR)")
    lines = subprocess.check_output([image / "python", "-c", code], cwd=tmp_path, text=True,
                                    env=user_env(tmp_path)).split()
    venv_root = image.parent.resolve()
    for line in lines:
        assert Path(line).resolve().is_relative_to(venv_root), line
    priors, probes = Path(lines[1]), Path(lines[2])
    shipped = sorted(p.name for p in priors.glob("*.json"))
    assert shipped == sorted(p.name for p in (ROOT / "data/priors").glob("*.json"))
    assert any(probes.iterdir())


def test_demo_runs_from_an_empty_directory_and_leaves_it_empty(image: Path, tmp_path: Path) -> None:
    cwd, home = tmp_path / "empty", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    done = subprocess.run([image / "latpred", "demo", "--minutes", "0.2", "--json"], cwd=cwd,
                          env=user_env(home), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout[done.stdout.index("{"):])
    assert {row["config"] for row in answer["rows"]} >= {"fp32", "int8", "prune30", "mixed"}
    assert all(row["measured_ms"] > 0 and row["predicted_ms"] > 0 for row in answer["rows"])
    assert list(cwd.iterdir()) == [], "latpred wrote into the working directory"
    assert (home / ".local/share/latpred/latpred.db").is_file()


def test_profile_runs_from_an_empty_directory(image: Path, tmp_path: Path) -> None:
    cwd, home = tmp_path / "empty", tmp_path / "home"
    cwd.mkdir()
    done = subprocess.run([image / "latpred", "profile", "--device", "cpu", "--threads", "1", "--budget-minutes",
                           "0.1"], cwd=cwd, env=user_env(home), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no op-space priors" not in done.stderr
    assert list(cwd.iterdir()) == [], "latpred wrote into the working directory"
    assert (home / ".local/share/latpred/latpred.db").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_image_command_serves_and_its_healthcheck_passes(image: Path, tmp_path: Path) -> None:
    instructions = dict(dockerfile_instructions())
    serve = json.loads(instructions["CMD"])
    port = free_port()
    serve = [str(image / serve[0]), *(a.replace("0.0.0.0", "127.0.0.1").replace("8000", str(port))
                                      for a in serve[1:])]
    check = json.loads(instructions["HEALTHCHECK"].split("CMD", 1)[1])
    check = [str(image / check[0]), *(a.replace("8000", str(port)) for a in check[1:])]
    env = {**user_env(tmp_path), "LATPRED_HOME": str(tmp_path / "data"), "LATPRED_API_TOKENS": "t"}
    server = subprocess.Popen(serve, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    healthy = False
    deadline = time.monotonic() + 90
    while not healthy and server.poll() is None and time.monotonic() < deadline:
        healthy = subprocess.run(check, env=env, capture_output=True).returncode == 0
        time.sleep(0.5)
    server.terminate()
    try:
        output = server.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        server.kill()
        output = server.communicate()[0] + "\n(killed: it did not stop within 30 s of SIGTERM)"
    assert healthy, output[-3000:]
    assert f"http://127.0.0.1:{port}" in output, "serve did not print its URL"


def test_the_wheel_carries_data_and_types_but_no_tests(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("latpred-*.whl"))).namelist()
    for required in ("latpred_data/priors/mobilenet_v2.json", "predictor/store/alembic.ini", "predictor/py.typed",
                     "profiler/py.typed", "service/py.typed", "service/static/dashboard.js"):
        assert required in names, required
    assert any(n.startswith("latpred_data/probes/") for n in names)
    assert any(n.startswith("predictor/store/migrations/versions/") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "data/"))]


def test_the_dockerfile_installs_at_build_time_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert "libgomp1" in runs  # LightGBM's wheel needs it
    assert ".[server]" in runs
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(instruction == "HEALTHCHECK" for instruction, _ in instructions)
    assert "pip" not in dict(instructions)["CMD"]


def test_compose_builds_the_image_and_starts_in_order_without_a_default_token() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) >= {"db", "migrate", "service", "agent"}
    assert services["db"]["healthcheck"]["test"]
    for name in ("migrate", "service", "agent"):
        assert services[name]["build"] == "."
        tokens = services[name]["environment"]["LATPRED_API_TOKENS"]
        assert re.fullmatch(r"\$\{LATPRED_API_TOKENS:\?[^}]+\}", tokens), "a token must be required, not defaulted"
    assert services["migrate"]["command"] == ["latpred", "migrate"]
    assert services["service"]["depends_on"] == {"db": {"condition": "service_healthy"},
                                                 "migrate": {"condition": "service_completed_successfully"}}
    assert services["service"]["restart"] == "unless-stopped"
    assert "healthcheck" not in services["service"] or not services["service"]["healthcheck"].get("disable")
    agent = services["agent"]
    assert agent["depends_on"] == {"service": {"condition": "service_healthy"}}
    assert "LATPRED_TOKEN" in agent["environment"]
    assert "http://service:8000" in shlex.join(agent["command"])
    assert "change-me" not in COMPOSE.read_text()


AGENT_RUN = """
import sys

class WithoutServerExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "starlette", "uvicorn", "psycopg", "multipart", "python_multipart"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, WithoutServerExtra())
import profiler.runner, profiler.sinks  # noqa: E401
from service.cli import main
sys.argv = ["latpred", *sys.argv[1:]]
main()
"""


def test_a_device_agent_needs_no_server_extra(image: Path, tmp_path: Path) -> None:
    from tests import factories

    model = tmp_path / "block.onnx"
    model.write_bytes(factories.residual_model().SerializeToString())
    done = subprocess.run([image / "python", "-c", AGENT_RUN, "kernels", str(model), "--json"], cwd=tmp_path,
                          env=user_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["kernels"]
    served = subprocess.run([image / "python", "-c", AGENT_RUN, "serve"], cwd=tmp_path, env=user_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 2 and "server" in served.stderr, served.stderr
