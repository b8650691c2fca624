"""`backend: openai` pools whose engines cannot start: a launched engine that exits stops
serve with the engine's log, and a launch asking for more GPUs than the Ray cluster has is
refused. Real `infersched serve` processes on the session's local Ray cluster
(`--address`), in a module of their own: test_engine_pools.py holds that cluster's one
serve (one scheduler per cluster) for the length of its module."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.engines.llama_server import MODEL_ALIAS
from tests.serve_process import CLI, REPO, START_TIMEOUT_S

pytest.importorskip("ray", reason="the live control plane runs on Ray (pip install ray)")


def test_a_launched_engine_that_exits_stops_serve_with_its_log(tmp_path, ray_cluster_address):
    cluster = {"name": "broken", "pools": [{
        "name": "broken", "backend": "openai", "model": MODEL_ALIAS,
        "launch": {"command": ["{python}", "-c", "import sys; print('no GPU here'); sys.exit(3)", "{port}"],
                   "num_gpus": 0}}]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(cluster))
    done = subprocess.run([*CLI, "serve", "--cluster", str(path), "--port", "0", "--metrics-port", "-1",
                           "--address", ray_cluster_address],
                          cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 1
    assert "real engines did not start" in done.stdout and "exited with 3" in done.stdout
    assert "no GPU here" in done.stdout


def test_launch_asking_for_more_gpus_than_the_cluster_has_is_refused(tmp_path, ray_cluster_address):
    cluster = {"name": "gpus", "pools": [{
        "name": "vllm", "backend": "openai", "model": MODEL_ALIAS,
        "launch": {"command": ["vllm", "serve", "--port", "{port}"], "instances": 2, "num_gpus": 1}}]}
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(cluster))
    done = subprocess.run([*CLI, "serve", "--cluster", str(path), "--port", "0", "--metrics-port", "-1",
                           "--address", ray_cluster_address],
                          cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if "the Ray cluster has 0" not in done.stdout:
        pytest.skip("this machine has GPUs")
    assert done.returncode == 2 and "launch: needs 2 GPUs in all" in done.stdout
