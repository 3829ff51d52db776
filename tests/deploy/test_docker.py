"""docker-compose.yml and deploy/docker/Dockerfile. No Docker engine runs here, so the compose
file is parsed and checked against the compose specification's rules, and the image's install
is replayed outside Docker: the files the Dockerfile copies build a wheel, which installs and
serves, and the image's HEALTHCHECK command passes against it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from tests.daemon.conftest import NotifyListener, child_env
from tests.deploy.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``$$`` for a dollar."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)


def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source for a service's volumes, short ("src:dst[:mode]") and long syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source", ""), v["target"]
        out[target] = source
    return out


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def test_compose_has_an_llm_server_and_the_sidecar_sharing_a_socket_volume() -> None:
    doc = compose()
    assert "version" not in doc  # obsolete in the compose specification
    services, volumes = doc["services"], doc["volumes"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"llm", "sidecar"}  # the rest only with a profile (test_compose_jetstream.py)

    llm = services["llm"]
    assert llm["image"].startswith("ghcr.io/ggml-org/llama.cpp:server")
    args = llm["command"]
    model = args[args.index("-m") + 1]
    assert os.path.dirname(model) in mounts(llm)  # the model comes from a volume
    llm_port = args[args.index("--port") + 1]

    sidecar = services["sidecar"]
    assert (ROOT / sidecar["build"]["context"] / sidecar["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = sidecar["environment"]
    socket_dir = os.path.dirname(env["SIDECAR_SOCKET"])
    shared = mounts(sidecar)[socket_dir]
    assert shared in volumes  # a named volume app containers can mount
    assert mounts(sidecar)[env["SIDECAR_DATA_DIR"]] in volumes
    assert env["SIDECAR_LLM_URL"] == f"http://llm:{llm_port}"  # the LLM by its service name
    assert sidecar["healthcheck"]["test"] == ["CMD", "sidecar", "health", "--degraded-ok"]
    assert sidecar["stop_signal"] == "SIGTERM"
    assert sidecar["depends_on"]["llm"]["condition"] in {"service_started", "service_healthy"}
    uid = sidecar["user"].split(":")[0]
    assert uid != "0" and f"--uid {uid}" in DOCKERFILE.read_text()  # the image's non-root user


def strict_parse(text: str) -> PyCompose:
    """Parse with compose_spec (a Rust implementation of the compose specification that refuses
    unknown keys, bad durations and unknown enum values), after compose's interpolation."""
    return PyCompose.from_yaml(yaml.safe_dump(interpolate(yaml.safe_load(text), {})))


def test_compose_parses_under_a_strict_implementation_of_the_specification() -> None:
    parsed = strict_parse(COMPOSE.read_text())
    parsed.validate()  # networks, volumes, configs and secrets that services name are declared
    assert sorted(parsed.service_names()) == ["llm", "nats-1", "nats-2", "nats-3", "sidecar", "sidecar-a", "sidecar-b"]


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("healthcheck:", "helthcheck:", "helthcheck"),
        ("stop_grace_period: 15s", "stop_grace_period: 15x", "stop_grace_period"),
        ("condition: service_started", "condition: started", "started"),
    ],
)
def test_the_strict_parse_catches_typos(old: str, new: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        strict_parse(COMPOSE.read_text().replace(old, new, 1))


def test_every_reference_in_compose_resolves() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), target
            assert source.startswith((".", "/")) or source in doc["volumes"], (name, source)
        for dep in service.get("depends_on", {}):
            assert dep in doc["services"], (name, dep)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # nothing unauthenticated leaves the host


def test_the_dockerfile_builds_a_slim_non_root_image_with_a_healthcheck() -> None:
    steps = dockerfile()
    bases = [args for op, args in steps if op == "FROM"]
    assert bases and all(re.match(r"python:3\.1[1-9]-slim\b", b) for b in bases), bases
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    (user,) = [args for op, args in runtime if op == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert any(op == "RUN" and "pip install" in args for op, args in runtime)
    (health,) = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert health.endswith('CMD ["sidecar", "health", "--degraded-ok"]')
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_the_files_the_dockerfile_copies_build_a_package_that_serves_and_passes_the_healthcheck(
    tmp_path: Path,
) -> None:
    steps = dockerfile()
    context = tmp_path / "context"
    for op, args in steps:  # the build stage's COPY lines, replayed into a clean context
        if op == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for src in sources:
                target = context / src
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy(ROOT / src, target)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, context],
        check=True,
        timeout=300,
    )
    site = tmp_path / "site"
    (wheel,) = wheels.glob("sidecar-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel],
        check=True,
        timeout=300,
    )
    # The image's environment, its paths moved into the temp dir; the installed copy, not the
    # checkout, is what runs (its dependencies come from this venv).
    image_env = dict(pair.split("=", 1) for op, args in steps if op == "ENV" for pair in shlex.split(args))
    image_env = {k: str(tmp_path / v.lstrip("/")) if v.startswith("/") else v for k, v in image_env.items()}
    os.makedirs(os.path.dirname(image_env["SIDECAR_SOCKET"]), mode=0o700)
    env = child_env({**image_env, "PYTHONPATH": str(site)})
    entry = [sys.executable, "-c", "import sys; from sidecar.cli import main; sys.exit(main())"]
    where = subprocess.run(
        [sys.executable, "-c", "import sidecar, sidecar_client; print(sidecar.__file__, sidecar_client.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.count(str(site)) == 2, where
    notify = NotifyListener(str(tmp_path / "notify"))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [*entry, "serve"],
        env={**env, "NOTIFY_SOCKET": notify.path},
        cwd=tmp_path,
        stderr=open(log, "wb"),  # noqa: SIM115
    )
    try:
        notify.wait_for("READY=1", context=log.read_text)
        health = subprocess.run(
            [*entry, "health", "--degraded-ok"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert health.returncode == 0, health.stdout + health.stderr
        prompts = subprocess.run(
            [*entry, "call", "narrator.prompt", '{"conversation_id": "img", "budget_tokens": 500}'],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert prompts.returncode == 0 and "narrator" in prompts.stdout  # package data shipped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.close()
