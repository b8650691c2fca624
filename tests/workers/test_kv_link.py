"""KV hand-over blocks: placeholders sized down from the modelled KV, and metadata
checked block by block, every error naming the block index and key."""
from __future__ import annotations

import msgpack
import pytest

from infersched.v1 import worker_pb2
from scheduler.cluster import Cluster
from scheduler.config import builtin_cluster_path, load_cluster
from workers.kv_link import PAYLOAD_SCALE_BYTES, KvIntake, kv_blocks, parse_kv_block
from workers.work import InvalidField


def meta(**over):
    base = {"request_id": "r", "block_index": 0, "num_blocks": 2, "token_start": 0, "token_end": 512,
            "dtype": "bfloat16", "shape": [32, 2, 512, 8, 128], "max_output_tokens": 10}
    base.update(over)
    return worker_pb2.KvBlock(meta=msgpack.packb({k: v for k, v in base.items() if v is not None}))


@pytest.mark.parametrize("block, index, prev_end, message", [
    (worker_pb2.KvBlock(meta=b"\xc1"), 0, 0, "block 0: field 'meta': not valid msgpack"),
    (worker_pb2.KvBlock(meta=msgpack.packb([1, 2])), 0, 0, "block 0: field 'meta': expected a msgpack map"),
    (meta(token_end=None), 0, 0, "block 0: key 'token_end': missing"),
    (meta(block_index="0"), 0, 0, "block 0: key 'block_index': expected an integer"),
    (meta(block_index=1), 0, 0, "block 0: key 'block_index': expected 0"),
    (meta(block_index=1, token_start=500, token_end=900), 1, 512, "block 1: key 'token_start': expected 512"),
    (meta(token_end=0), 0, 0, "block 0: key 'token_end': must exceed token_start"),
    (meta(shape="32x2"), 0, 0, "block 0: key 'shape': expected list"),
    (meta(max_output_tokens=0), 0, 0, "block 0: key 'max_output_tokens': must be > 0"),
    (meta(ready_unix_s="soon"), 0, 0, "block 0: key 'ready_unix_s': expected a number"),
])
def test_kv_block_validation_names_block_and_key(block, index, prev_end, message):
    first = msgpack.unpackb(meta().meta) if index else None
    with pytest.raises(InvalidField) as err:
        parse_kv_block(block, index, first, prev_end)
    assert str(err.value).startswith(message)


def test_kv_block_must_match_block_zero():
    first = msgpack.unpackb(meta().meta)
    with pytest.raises(InvalidField, match="block 1: key 'request_id': 's' differs from block 0's 'r'"):
        parse_kv_block(meta(request_id="s", block_index=1, token_start=512, token_end=900), 1, first, 512)


def test_blocks_describe_the_modelled_kv_and_an_intake_takes_them_back():
    perf = next(p for p in Cluster(load_cluster(builtin_cluster_path("live-small"))).pools
                if p.name == "h100-prefill").perf
    blocks = kv_blocks(perf, "r", 1500, 64, block_tokens=512)
    model = perf.model
    assert [(m["token_start"], m["token_end"]) for m, _ in blocks] == [(0, 512), (512, 1024), (1024, 1500)]
    assert blocks[2][0]["shape"] == [model.layers, 2, 476, model.kv_heads, model.head_dim]
    assert sum(m["modelled_bytes"] for m, _ in blocks) == pytest.approx(1500 * perf.kv_bytes_per_token, abs=3)
    assert all(len(p) == max(1, m["modelled_bytes"] // PAYLOAD_SCALE_BYTES) for m, p in blocks)
    intake = KvIntake()
    for m, payload in blocks:
        assert not intake.complete
        intake.add(worker_pb2.KvBlock(meta=msgpack.packb(m), payload=payload))
    assert intake.complete and (intake.index, intake.prev_end) == (3, 1500)
