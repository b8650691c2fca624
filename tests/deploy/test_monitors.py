"""The Prometheus Operator monitors beside the KubeRay manifests point at the port
raycluster.yaml publishes for `infersched serve --metrics-port`, and select the
head pod (PodMonitor) or the head service KubeRay creates for it (ServiceMonitor)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from infersched.cli import build_parser
from scheduler.serve import DEFAULT_METRICS_PORT

KUBERAY = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
MONITORS = {"ServiceMonitor": KUBERAY / "servicemonitor.yaml", "PodMonitor": KUBERAY / "podmonitor.yaml"}


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _head() -> tuple[dict, dict]:
    """(the RayCluster, its head pod template)."""
    cluster = _load(KUBERAY / "raycluster.yaml")
    return cluster, cluster["spec"]["headGroupSpec"]["template"]


def _metrics_port_name() -> str:
    _, template = _head()
    (container,) = template["spec"]["containers"]
    names = [p["name"] for p in container["ports"] if p["containerPort"] == DEFAULT_METRICS_PORT]
    assert len(names) == 1, container["ports"]
    return names[0]


def _endpoints(monitor: dict) -> list[dict]:
    return monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]


@pytest.mark.parametrize("kind", MONITORS)
def test_monitor_is_a_prometheus_operator_resource_scraping_the_metrics_port(kind):
    monitor = _load(MONITORS[kind])
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", kind)
    (endpoint,) = _endpoints(monitor)
    assert endpoint["port"] == _metrics_port_name() and endpoint["path"] == "/metrics"


def test_pod_monitor_selects_the_head_pod():
    _, template = _head()
    selector = _load(MONITORS["PodMonitor"])["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()


def test_service_monitor_selects_the_head_service_of_this_ray_cluster():
    cluster, _ = _head()
    selector = _load(MONITORS["ServiceMonitor"])["spec"]["selector"]["matchLabels"]
    assert selector == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}


def test_the_documented_serve_command_binds_the_published_metrics_port_on_the_pod():
    """raycluster.yaml's header submits `infersched serve`; its flags must bind the port the
    monitors scrape on the pod's interfaces (loopback would be unreachable)."""
    text = (KUBERAY / "raycluster.yaml").read_text()
    lines = [ln.lstrip("# ").rstrip(" \\") for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("infersched serve"))
    argv = shlex.split(" ".join(lines[start:start + 2]))[1:]
    args = build_parser().parse_args(argv)
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", DEFAULT_METRICS_PORT)
