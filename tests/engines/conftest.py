"""Real llama.cpp engines for the engine tests: a tiny model written by the test
(no download) served by llama-cpp-python's OpenAI-compatible server."""
from __future__ import annotations

import pytest

from tests.engines.llama_server import SKIP_REASON, running_llama_server, server_importable
from tests.engines.tiny_llama import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    pytest.importorskip("gguf", reason="the gguf package writes the test model (pip install -e '.[engines]')")
    if not server_importable():
        pytest.skip(SKIP_REASON)
    return write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama_engine(tiny_model, tmp_path_factory):
    """One engine shared by the tests that leave it as they found it."""
    with running_llama_server(tiny_model, tmp_path_factory.mktemp("engine")) as server:
        yield server


@pytest.fixture
def disposable_llama_engine(tiny_model, tmp_path):
    """An engine of the test's own, for tests that kill or pause it."""
    with running_llama_server(tiny_model, tmp_path) as server:
        yield server
