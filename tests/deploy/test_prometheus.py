"""A real Prometheus server scrapes a running `infersched serve`: the metrics a
dashboard queries arrive through Prometheus' own HTTP API with the values the
replay produced. `.ci/run` installs Debian's `prometheus` when it is missing."""
from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from scheduler.config import builtin_cluster_path
from tests.serve_process import REPO, served_process

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="the Prometheus server is not installed (apt-get install prometheus; "
                                       ".ci/run installs it)")

INFERSCHED = str(Path(sys.executable).parent / "infersched")
TRACE = REPO / "simulator" / "data" / "azure_conv_2023.csv.gz"
START_TIMEOUT_S = 90.0
SCRAPE_INTERVAL_S = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve(ray_cluster_address):
    with served_process(builtin_cluster_path("live-small"), "--metrics-port", "0", "--http-port", "0",
                        "--time-scale", "0.01", "--address", ray_cluster_address, command=(INFERSCHED,),
                        timeout_s=START_TIMEOUT_S) as served:
        yield served.address, urllib.parse.urlsplit(served.metrics).netloc


@pytest.fixture(scope="module")
def prometheus(serve, tmp_path_factory):
    """Prometheus on a free loopback port, scraping serve's metrics endpoint every second."""
    _, metrics_target = serve
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, evaluation_interval: {SCRAPE_INTERVAL_S}s}}\n"
        "scrape_configs:\n"
        f"  - job_name: infersched\n    static_configs: [{{targets: ['{metrics_target}']}}]\n")
    port = _free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(root / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait_for(lambda: _query(api, 'up{job="infersched"}') == [1.0], what="Prometheus scraping serve",
                  log=root / "prometheus.log")
        yield api
    finally:
        proc.terminate()
        proc.wait(30)


def _query(api: str, expr: str) -> list[float] | None:
    """Values of an instant query, or None while Prometheus is not answering."""
    try:
        with urllib.request.urlopen(f"{api}/query?{urllib.parse.urlencode({'query': expr})}", timeout=5) as r:
            body = json.load(r)
    except OSError:
        return None
    assert body["status"] == "success", body
    return sorted(float(sample["value"][1]) for sample in body["data"]["result"])


def _wait_for(condition, what: str, timeout_s: float = 60.0, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f"; log: {log.read_text()[-2000:]}" if log else ""))


@pytest.fixture(scope="module")
def replayed(serve, prometheus, tmp_path_factory) -> int:
    """60 requests replayed through serve, all of them seen by Prometheus; returns how many completed."""
    address, _ = serve
    out = tmp_path_factory.mktemp("replay") / "live.json"
    done = subprocess.run([INFERSCHED, "replay", "--target", address, "--trace", str(TRACE), "--requests", "60",
                           "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    completed = json.loads(out.read_text())["completed"]
    expr = 'infersched_requests_total{status="completed"}'
    _wait_for(lambda: _query(prometheus, expr) == [float(completed)], what=f"{expr} == {completed}")
    return completed


def test_prometheus_sees_every_replayed_request(prometheus, replayed):
    completed = replayed
    assert completed == 60
    # A histogram a dashboard plots: its count went up by the same number of requests.
    assert _query(prometheus, "infersched_ttft_seconds_count") == [float(completed)]
    # Per-pool gauges arrive labelled by pool; live-small has three pools.
    assert len(_query(prometheus, "infersched_pool_kv_free_tokens")) == 3


# ---- the metrics reference and the Grafana dashboard against a real scrape ----------------

DASHBOARD = REPO / "deploy" / "grafana" / "infersched.json"
METRICS_MD = REPO / "docs" / "METRICS.md"
FRONTEND_ONLY = {"infersched_frontends", "infersched_frontend_restarts_total"}  # serve --frontends N
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$pool": ".*"}


def _scrape(serve) -> dict[str, set[str]]:
    """Family name as queried (counters with _total) -> the sample names serve exports under it."""
    from prometheus_client.parser import text_string_to_metric_families

    _, metrics_target = serve
    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10) as r:
        text = r.read().decode()
    # Each counter's and histogram's `_created` series parses as a family of its own.
    return {(f"{f.name}_total" if f.type == "counter" else f.name): {s.name for s in f.samples}
            for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_serve_exports_exactly_the_metrics_the_reference_lists(serve, replayed):
    import re

    listed = set(re.findall(r"^\| `(\w+)` \|", METRICS_MD.read_text(), re.M))
    assert set(_scrape(serve)) == listed - FRONTEND_ONLY


def test_every_metric_the_dashboard_queries_is_in_a_live_scrape(serve, replayed):
    import re

    scraped = _scrape(serve)
    exported = set(scraped) | {name for names in scraped.values() for name in names}
    queried = {name for _, expr in _dashboard_queries()
               for name in re.findall(r"\b(?:infersched|process)_\w+", expr)}
    assert queried and not queried - exported, sorted(queried - exported)
    # The panels the dashboard promises, each on a metric of its own.
    for metric in ("infersched_requests_total", "infersched_pool_ttft_seconds_bucket",
                   "infersched_pool_tpot_seconds_bucket", "infersched_pool_queue_depth",
                   "infersched_pool_kv_free_tokens",
                   "infersched_pool_energy_joules_total", "infersched_pool_cost_usd_total",
                   "infersched_rejections_total"):
        assert metric in queried, metric


def test_every_dashboard_query_runs_in_prometheus_and_shows_the_replay(prometheus, replayed):
    # The replay rejects nothing, so only the rejections panel may be empty.
    may_be_empty = {"Rejections per second by reason"}
    for title, expr in _dashboard_queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert _query(prometheus, expr) is not None, f"{title}: {expr}"
        if title not in may_be_empty:
            # A rate needs two scrapes of a series; per-pool series are born during the replay.
            _wait_for(lambda: bool(_query(prometheus, expr)), what=f"{title}: a series for {expr}", timeout_s=20)
    # Per-pool TTFT percentiles: a series per pool that can prefill (live-small: h100-prefill and
    # b200) from serve's start, a positive time where prefills ran, NaN (no rate) where none did.
    p50 = _query(prometheus,
                 "histogram_quantile(0.5, sum by (le, pool) (rate(infersched_pool_ttft_seconds_bucket[1m])))")
    ran = [v for v in p50 if not math.isnan(v)]
    assert len(p50) == 2 and ran and all(v > 0 for v in ran)
