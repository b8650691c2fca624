"""Start and stop a real llama.cpp engine for tests: llama-cpp-python's
OpenAI-compatible server on a free 127.0.0.1 port, serving a model file.

`running_llama_server` is a context manager so other test packages (the live
plane, the front door, benches) can start engines from their own fixtures;
tests/engines/conftest.py wraps it as fixtures.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.serve_process import stop_process

MODEL_ALIAS = "tiny-llama"
START_TIMEOUT_S = 120.0
SKIP_REASON = ("llama-cpp-python's server is not installed "
               "(pip install -e '.[engines]'; it builds llama.cpp from source)")


def server_importable() -> bool:
    """Whether llama-cpp-python and its server extra import here."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class LlamaServer:
    base_url: str  # http://127.0.0.1:PORT, without /v1
    model: str
    process: subprocess.Popen
    log_path: Path

    def kill(self) -> None:
        """SIGKILL: the engine dies as a crashed one does, without closing sockets politely."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the engine still accepts connections (the kernel does) but never answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model_path: Path, *, port: int | str, host: str = "127.0.0.1", n_ctx: int = 512,
                   threads: int = 1, python: str = sys.executable) -> list[str]:
    """The engine's command line (also what a cluster's `launch.command` runs)."""
    return [python, "-m", "llama_cpp.server", "--model", str(model_path),
            "--model_alias", MODEL_ALIAS, "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            # Queue concurrent requests as a real engine serves them; by default a new
            # request interrupts the one running.
            "--interrupt_requests", "false"]


@contextlib.contextmanager
def running_llama_server(model_path: Path, log_dir: Path, *, n_ctx: int = 512,
                         threads: int = 1, port: int | None = None) -> Iterator[LlamaServer]:
    """A llama-cpp-python server on a loopback port (`port`, else a free one), ready
    when yielded.

    One thread: the machine running the suite has few cores, and the tiny
    model needs no more.
    """
    port = port or free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    command = server_command(model_path, port=port, n_ctx=n_ctx, threads=threads)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", MODEL_ALIAS, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(process, timeout_s=30)


def _wait_ready(server: LlamaServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"llama-cpp-python server exited with {server.process.returncode}: "
                               f"{server.log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(server.base_url + "/v1/models", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama-cpp-python server not ready in {START_TIMEOUT_S:.0f} s: "
                       f"{server.log_path.read_text(errors='replace')[-3000:]}")
