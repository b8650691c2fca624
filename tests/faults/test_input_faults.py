"""Hostile input against the scheduler's client port, served as `serve` serves it.

Each scheduler is a real process (`python -m scheduler.live.standalone`: the
core, servicer, gRPC server options and front-end relay of `infersched serve`,
with in-process emulated workers instead of Ray actors), reached over gRPC on
loopback, once serving the port itself and once through a front-end process.
Its stderr is kept: no test may leave a traceback or a long client value in it.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infersched.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from input_bounds import memory_mb, metadata_flood, reset_peak, stream_burst  # noqa: E402

pytestmark = pytest.mark.timeout(300)

# live-small serves llama-3.1-8b only: its context and vocabulary.
CONTEXT, VOCAB = 131072, 128256
LONG_LINE_BYTES = 1024  # no log line may carry a client value this long


class Scheduler:
    """A standalone scheduler process and a sync channel to it."""

    def __init__(self, *args: str):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "scheduler.live.standalone", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        info = json.loads(self.proc.stdout.readline())
        self.pids = [info["pid"], *info["frontend_pids"]]
        self.target = f"127.0.0.1:{info['port']}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)

    def stats(self) -> scheduler_pb2.SchedulerStats:
        return self.stub.GetStats(scheduler_pb2.GetStatsRequest(), timeout=10)

    def generate(self, request: scheduler_pb2.GenerateRequest, metadata=(), timeout_s: float = 30.0):
        """(status code, details, final record or None) of one Generate call."""
        record = None
        try:
            for item in self.stub.Generate(request, metadata=metadata, timeout=timeout_s):
                if item.HasField("record"):
                    record = item.record
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), None
        return grpc.StatusCode.OK, "", record

    def stop(self) -> str:
        self.channel.close()
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


def check_log(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]
    assert max(map(len, text.splitlines()), default=0) < LONG_LINE_BYTES, "a log line carries a long value"


@pytest.fixture(scope="module", params=[0, 1], ids=["in-process", "front-end"])
def scheduler(request):
    s = Scheduler("--cluster", "live-small", "--time-scale", "0.0005", "--frontends", str(request.param))
    yield s
    check_log(s.stop())


def req(**fields) -> scheduler_pb2.GenerateRequest:
    fields.setdefault("max_output_tokens", 4)
    if "prompt_tokens" not in fields:
        fields.setdefault("prompt_length", 64)
    return scheduler_pb2.GenerateRequest(**fields)


INVALID, OUT = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE
BIG = "x" * (1 << 20)
# (request, status, words every answer must hold: the field and its limit)
BAD = [
    (req(request_id=BIG), INVALID, ["'request_id'", "1,048,576 bytes", "limit 128"]),
    (req(request_id="é" * 65), INVALID, ["'request_id'", "130 bytes", "limit 128"]),
    (req(model_tier=BIG), INVALID, ["'model_tier'", "limit 128"]),
    (req(prompt_length=400_000), OUT, ["'prompt_length'", "400,000", "131,072"]),
    (req(prompt_length=CONTEXT, max_output_tokens=1), OUT, ["'max_output_tokens'", "131,072"]),
    (req(max_output_tokens=CONTEXT), OUT, ["'max_output_tokens'", "131,072"]),
    (req(prompt_tokens=[1, 2, VOCAB]), OUT, ["'prompt_tokens'", f"id {VOCAB} at index 2", "128,256"]),
    (req(prompt_tokens=[-1]), OUT, ["'prompt_tokens'", "id -1 at index 0"]),
    (req(prompt_length=-5), INVALID, ["'prompt_length'", "> 0"]),
    (req(max_output_tokens=0), INVALID, ["'max_output_tokens'", "> 0"]),
    (req(model_tier="no-such-model"), INVALID, ["'model_tier'", "llama-3.1-8b"]),
    (req(ttft_slo_s=float("nan")), INVALID, ["'ttft_slo_s'"]),
]


@pytest.mark.parametrize("request_, code, words", BAD, ids=[f"{i}-{b[2][0]}" for i, b in enumerate(BAD)])
def test_a_value_past_its_bound_is_answered_naming_field_and_limit(scheduler, request_, code, words):
    before = scheduler.stats()
    got, details, _ = scheduler.generate(request_)
    after = scheduler.stats()
    assert got == code, details
    for word in words:
        assert word in details
    assert len(details.encode()) < 400 and "x" * 65 not in details  # at most 64 bytes of the value
    assert after.requests_invalid == before.requests_invalid + 1
    assert after.requests_total == before.requests_total


def test_requests_at_their_bounds_are_served(scheduler):
    for request in (req(request_id="r" * 128, prompt_tokens=[0, VOCAB - 1], max_output_tokens=2),
                    req(prompt_length=CONTEXT - 1, max_output_tokens=1, model_tier="llama-3.1-8b")):
        code, details, record = scheduler.generate(request)
        assert code == grpc.StatusCode.OK, details
        # A prompt at the context passes the input bounds; KV memory is the policy's to judge.
        assert record.status in (common_pb2.REQUEST_STATUS_COMPLETED, common_pb2.REQUEST_STATUS_REJECTED)
        if record.status == common_pb2.REQUEST_STATUS_REJECTED:
            assert record.reason_code == common_pb2.REASON_CODE_NO_KV_MEMORY


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\x01garbage", b"\x0a\x05ab", b"\x12\x80", b"\x0a\x02\xc3\x28"],
                         ids=["bad-tag", "cut-string", "cut-varint", "bad-utf8"])
def test_corrupt_protobuf_is_invalid_argument_with_a_reason_and_counted(scheduler, payload):
    raw = scheduler.channel.unary_stream("/infersched.v1.Scheduler/Generate")
    before = scheduler.stats()
    with pytest.raises(grpc.RpcError) as caught:
        list(raw(payload, timeout=10))
    assert caught.value.code() == INVALID
    assert caught.value.details().startswith("request is not a valid infersched.v1.GenerateRequest: ")
    assert "<class" not in caught.value.details()
    assert scheduler.stats().requests_invalid == before.requests_invalid + 1


@pytest.mark.parametrize("value_bytes, refused", [(15_000, False), (17_000, True), (4 << 20, True)])
def test_metadata_is_bounded_at_16_kib(scheduler, value_bytes, refused):
    code, details, _ = scheduler.generate(req(), metadata=(("x-pad", "a" * value_bytes),))
    assert (code == grpc.StatusCode.RESOURCE_EXHAUSTED) == refused, details
    if refused:
        assert "16384" in details


def test_1500_calls_with_2_mb_of_metadata_are_refused_and_rss_grows_under_100_mb(scheduler):
    for pid in scheduler.pids:
        reset_peak(pid)
    before = [memory_mb(pid)["VmRSS"] for pid in scheduler.pids]
    statuses = asyncio.run(metadata_flood(scheduler.target, 1500, 2_000_000, 32))
    growth = [memory_mb(pid)["VmHWM"] - b for pid, b in zip(scheduler.pids, before)]
    assert statuses == {"RESOURCE_EXHAUSTED": 1500}
    assert max(growth) < 100, f"peak RSS growth per process (MB): {growth}"
    assert scheduler.generate(req())[0] == grpc.StatusCode.OK  # still serving


def test_a_5000_stream_burst_ends_every_stream_with_bounded_rss(scheduler):
    for pid in scheduler.pids:
        reset_peak(pid)
    before = [memory_mb(pid)["VmRSS"] for pid in scheduler.pids]
    stats0 = scheduler.stats()
    ends = asyncio.run(stream_burst(scheduler.target, 5000))
    growth = [memory_mb(pid)["VmHWM"] - b for pid, b in zip(scheduler.pids, before)]
    stats = scheduler.stats()
    # Each stream ends with its record, or is refused by the queue bound (counted as rejected).
    assert set(ends) <= {"REQUEST_STATUS_COMPLETED", "RESOURCE_EXHAUSTED"} and sum(ends.values()) == 5000, ends
    assert stats.requests_total - stats0.requests_total == 5000
    assert stats.requests_completed - stats0.requests_completed == ends.get("REQUEST_STATUS_COMPLETED", 0)
    assert stats.in_flight == 0
    assert max(growth) < 250, f"peak RSS growth per process (MB): {growth}"


def test_pending_bytes_are_bounded_and_refusals_counted_by_code():
    s = Scheduler("--cluster", "live-small", "--time-scale", "0.0005", "--max-pending-bytes", "4096")
    try:
        code, details, _ = s.generate(req(prompt_tokens=list(range(20_000, 22_000))))  # 6 KB of token ids
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-pending-bytes" in details, details
        assert s.generate(req())[0] == grpc.StatusCode.OK
        stats = s.stats()
        assert (stats.requests_total, stats.requests_rejected, stats.requests_completed) == (2, 1, 1)
        assert dict(stats.reasons) == {"PENDING_BYTES": 1}
    finally:
        check_log(s.stop())


# ---- property-based: every field of GenerateRequest, one process per path --------------------------------------

INT32 = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, 1, -1, CONTEXT - 1, CONTEXT, CONTEXT + 1]),
                  st.integers(1, 512))
TEXT = st.one_of(st.text(max_size=8), st.text(min_size=120, max_size=140), st.sampled_from(["", "llama-3.1-8b"]))
FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.001, 10.0))


@st.composite
def generate_requests(draw) -> scheduler_pb2.GenerateRequest:
    r = scheduler_pb2.GenerateRequest(
        request_id=draw(TEXT), prompt_length=draw(INT32), max_output_tokens=draw(st.one_of(INT32, st.integers(1, 64))),
        model_tier=draw(TEXT),
        prompt_tokens=draw(st.lists(st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(0, VOCAB - 1)),
                                    max_size=20)),
        prefix_block_hashes=draw(st.lists(st.integers(0, 2**64 - 1), max_size=5)))
    for name in ("ttft_slo_s", "tpot_slo_s", "min_capability", "sent_unix_s", "difficulty"):
        if draw(st.booleans()):
            setattr(r, name, draw(FLOAT))
    return r


ANSWERS = {grpc.StatusCode.OK, INVALID, OUT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_fuzzed_generate_requests_get_a_proper_status_and_are_counted(scheduler):
    seen = {"invalid": 0, "records": 0}
    before = scheduler.stats()

    @settings(max_examples=400, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(generate_requests())
    def one(request):
        code, details, record = scheduler.generate(request, timeout_s=60)
        assert code in ANSWERS, f"{code}: {details}"
        assert "Traceback" not in details and "<class" not in details and len(details.encode()) < 600
        if code in (INVALID, OUT):
            seen["invalid"] += 1
        elif code == grpc.StatusCode.OK:
            assert record is not None and record.status != common_pb2.REQUEST_STATUS_UNSPECIFIED
            assert (record.reason_code == common_pb2.REASON_CODE_UNSPECIFIED) == \
                (record.status == common_pb2.REQUEST_STATUS_COMPLETED)
            seen["records"] += 1

    one()
    after = scheduler.stats()
    assert after.requests_invalid - before.requests_invalid == seen["invalid"]
    assert after.requests_total - before.requests_total == seen["records"]
    assert after.in_flight == 0
