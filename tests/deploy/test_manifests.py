"""The Ray launcher config and KubeRay manifests carry the resources the scheduler asks for.

Worker actors request `device_resource(pool.device)` units, one per chip of
their instance (scheduler.live.actor). These tests check, without any cluster,
that every node group declares only such names, that the groups cover every
device the example clusters in deploy/clusters/ use, that an instance of N
chips fits on one node of its kind, and that the groups started by default
(min_workers / replicas) hold the cluster each file says it is sized for.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from scheduler.cluster import Cluster
from scheduler.config import load_cluster
from scheduler.live.actor import device_resource, pool_resources
from workers.devices import DEVICES

ROOT = Path(__file__).resolve().parents[2]
RAY_UP = ROOT / "deploy" / "ray" / "cluster.yaml"
RAYCLUSTER = ROOT / "deploy" / "kuberay" / "raycluster.yaml"
RAYJOB = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "kuberay" / "Dockerfile"
CLUSTER_FILES = sorted((ROOT / "deploy" / "clusters").glob("*.yaml"))
# The cluster file the launcher config and the RayCluster start nodes for by default.
SIZED_FOR = ROOT / "deploy" / "clusters" / "hybrid.yaml"
DEVICE_RESOURCES = {device_resource(name) for name in DEVICES}
STOCK_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _cluster(path: Path) -> Cluster:
    return Cluster(load_cluster(path))


def _kuberay_resources(group: dict) -> dict[str, float]:
    """`rayStartParams.resources` is a JSON object inside a quoted string ('"{...}"')."""
    text = group.get("rayStartParams", {}).get("resources")
    if text is None:
        return {}
    value = json.loads(text)
    return json.loads(value) if isinstance(value, str) else value


def _ray_up_groups() -> dict[str, tuple[dict[str, float], int, int]]:
    """node type -> (resources, min nodes, max nodes)."""
    config = _load(RAY_UP)
    out = {}
    for name, node in config["available_node_types"].items():
        head = name == config["head_node_type"]
        out[name] = (node.get("resources", {}), 1 if head else node.get("min_workers", 0),
                     1 if head else node.get("max_workers", 0))
    return out


def _kuberay_groups(spec: dict) -> dict[str, tuple[dict[str, float], int, int]]:
    out = {"head": (_kuberay_resources(spec["headGroupSpec"]), 1, 1)}
    for group in spec["workerGroupSpecs"]:
        replicas = group.get("replicas", group.get("minReplicas", 0))
        out[group["groupName"]] = (_kuberay_resources(group), replicas,
                                   group.get("maxReplicas", replicas))
    return out


MANIFESTS = {
    "ray-up": _ray_up_groups,
    "raycluster": lambda: _kuberay_groups(_load(RAYCLUSTER)["spec"]),
}


def _capacity(groups, which: int) -> dict[str, float]:
    total: dict[str, float] = {}
    for resources, low, high in groups.values():
        count = (low, high)[which]
        for key, value in resources.items():
            total[key] = total.get(key, 0.0) + value * count
    return total


def _short(need: dict[str, float], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) < v}


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_resource_names_are_the_schedulers(manifest):
    groups = MANIFESTS[manifest]()
    for name, (resources, _, _) in groups.items():
        custom = set(resources) - STOCK_RESOURCES
        assert custom <= DEVICE_RESOURCES, f"{manifest} group {name}: unknown resources {custom - DEVICE_RESOURCES}"
        for key, value in resources.items():
            assert isinstance(value, (int, float)) and value >= 0, f"{manifest} group {name}: {key}={value!r}"


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_head_declares_no_device(manifest):
    groups = MANIFESTS[manifest]()
    head = groups["head"][0]
    assert not set(head) & DEVICE_RESOURCES, "worker actors must not land on the head"


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
@pytest.mark.parametrize("cluster_file", CLUSTER_FILES, ids=lambda p: p.stem)
def test_max_size_holds_every_example_cluster(manifest, cluster_file):
    groups = MANIFESTS[manifest]()
    cluster = _cluster(cluster_file)
    assert not _short(pool_resources(cluster), _capacity(groups, 1)), (
        f"{manifest} at max size cannot hold {cluster_file.name}: {_short(pool_resources(cluster), _capacity(groups, 1))}")
    # An instance's chips must all be on one node: one actor, one node.
    for pool in cluster.pools:
        key = device_resource(pool.config.device)
        largest = max((r.get(key, 0.0) for r, _, high in groups.values() if high > 0), default=0.0)
        assert largest >= pool.perf.chips, (
            f"{manifest}: pool {pool.name} needs {pool.perf.chips} x {key} on one node; the largest node has {largest}")


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_default_size_holds_the_cluster_it_names(manifest):
    groups = MANIFESTS[manifest]()
    need = pool_resources(_cluster(SIZED_FOR))
    assert not _short(need, _capacity(groups, 0)), _short(need, _capacity(groups, 0))


def test_ray_up_config_passes_rays_schema():
    pytest.importorskip("ray", reason="the launcher schema ships with ray (pip install ray)")
    pytest.importorskip("jsonschema", reason="ray validates launcher configs with jsonschema")
    from ray.autoscaler._private.util import validate_config

    validate_config(_load(RAY_UP))


def test_ray_up_installs_the_project_and_mounts_it():
    config = _load(RAY_UP)
    assert config["file_mounts"].get("~/infersched") == "."
    assert any("pip install" in c and "~/infersched" in c for c in config["setup_commands"])
    for name, node in config["available_node_types"].items():
        assert node["node_config"]["InstanceType"], name


def test_ray_versions_agree():
    """Head, workers and the client that launches must run one Ray version."""
    ray_up = _load(RAY_UP)
    image_version = re.fullmatch(r"rayproject/ray:([\d.]+)-py311", ray_up["docker"]["image"]).group(1)
    pins = {m for c in ray_up["setup_commands"] for m in re.findall(r"ray\[default\]==([\d.]+)", c)}
    docker_from = re.search(r"^FROM rayproject/ray:([\d.]+)-py311$", DOCKERFILE.read_text(), re.M).group(1)
    kuberay = {_load(RAYCLUSTER)["spec"]["rayVersion"], _load(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"]}
    assert pins == {image_version} and kuberay == {image_version} and docker_from == image_version


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_kuberay_start_params_are_strings(path):
    """KubeRay's CRD types rayStartParams as map[string]string."""
    doc = _load(path)
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert doc["apiVersion"] == "ray.io/v1"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for key, value in group["rayStartParams"].items():
            assert isinstance(value, str), f"rayStartParams.{key} must be a string, got {value!r}"
        for container in group["template"]["spec"]["containers"]:
            assert container["image"]


def _rayjob_script() -> str:
    return _load(RAYJOB)["spec"]["entrypoint"]


def test_rayjob_cluster_holds_the_cluster_it_serves():
    script = _rayjob_script()
    cluster_path = re.search(r"^cluster=(\S+)$", script, re.M).group(1)
    assert (ROOT / cluster_path).exists(), cluster_path
    groups = _kuberay_groups(_load(RAYJOB)["spec"]["rayClusterSpec"])
    need = pool_resources(_cluster(ROOT / cluster_path))
    assert not _short(need, _capacity(groups, 0)), _short(need, _capacity(groups, 0))
    for name, (resources, _, _) in groups.items():
        assert set(resources) - STOCK_RESOURCES <= DEVICE_RESOURCES, name


def test_rayjob_entrypoint_joins_the_cluster_and_names_real_files():
    script = _rayjob_script()
    subprocess.run(["sh", "-n", "-c", script], check=True)  # POSIX sh: the job runs it with /bin/sh
    serve = next(line for line in script.splitlines() if line.lstrip().startswith("infersched serve"))
    assert "--address auto" in serve
    for token in shlex.split(script.replace("\\\n", " ")):
        if token.startswith(("deploy/", "simulator/data/")):
            assert (ROOT / token).exists(), token


def test_local_multinode_script_is_valid_bash():
    script = ROOT / "deploy" / "local_multinode.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, "deploy/local_multinode.sh must be executable"
