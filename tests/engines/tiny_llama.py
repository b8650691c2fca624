"""Writes a tiny Llama-architecture GGUF model: random weights, a real
SentencePiece-style vocabulary and a chat template, a few hundred kB.

The engine tests need a real inference engine without downloading a model, so
the model is made here with the `gguf` package. The vocabulary is generated:
control tokens, the 256 byte-fallback tokens SentencePiece vocabularies carry,
the printable ASCII characters and word pieces (every prefix of a list of
common words, so the tokenizer's bigram merges can reach each word). Scores
grow with piece length, so merges prefer longer pieces, as in a trained model.

The output rows of control and byte tokens are zero, so their logit is exactly
0 while the largest of several hundred random logits is positive: greedy
decoding (temperature 0) never ends early on EOS and never emits a partial
UTF-8 byte, so each generated token is one piece of text and a request runs
to exactly `max_tokens`. Fixed seed: the same file every time.
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # SentencePiece's word-boundary marker
WORDS = ("the of and to in is was for on that with as by at from it an be this are "
         "which or his her they have had not one all their but were has more been "
         "new time first who after two when also into over model token request "
         "prefill decode cache batch engine latency hello world quick brown fox "
         "jumps lazy dog system user assistant").split()
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n"
                 "{{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CONTEXT_LENGTH = 2048
EMBEDDING = 64
HEADS = 4
KV_HEADS = 2
FEED_FORWARD = 128
LAYERS = 2
SEED = 20261207


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) of the generated SentencePiece vocabulary."""
    from gguf import TokenType

    pieces = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    words: list[str] = [SPACE] + [c for c in string.printable if c.isprintable() and c != " "]
    for word in WORDS:
        words += [SPACE + word[:k] for k in range(1, len(word) + 1)]
    seen = set(pieces)
    for piece in words:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
            types.append(TokenType.NORMAL)
    scores = [0.0] * 259 + [float(len(p)) for p in pieces[259:]]
    return pieces, scores, [int(t) for t in types]


def write_tiny_llama(path: Path) -> Path:
    """Write the model to `path` and return it."""
    import gguf

    pieces, scores, types = vocabulary()
    vocab = len(pieces)
    rng = np.random.default_rng(SEED)
    head_dim = EMBEDDING // HEADS

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 0.5, size=(rows, cols)).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("infersched-tiny-llama")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    ones = np.ones(EMBEDDING, dtype=np.float32)
    writer.add_tensor("token_embd.weight", matrix(vocab, EMBEDDING))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones)
        writer.add_tensor(f"{block}.attn_q.weight", matrix(EMBEDDING, EMBEDDING))
        writer.add_tensor(f"{block}.attn_k.weight", matrix(KV_HEADS * head_dim, EMBEDDING))
        writer.add_tensor(f"{block}.attn_v.weight", matrix(KV_HEADS * head_dim, EMBEDDING))
        writer.add_tensor(f"{block}.attn_output.weight", matrix(EMBEDDING, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones)
        writer.add_tensor(f"{block}.ffn_gate.weight", matrix(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_up.weight", matrix(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{block}.ffn_down.weight", matrix(EMBEDDING, FEED_FORWARD))
    writer.add_tensor("output_norm.weight", ones)
    output = matrix(vocab, EMBEDDING)
    output[[t != int(gguf.TokenType.NORMAL) for t in types]] = 0.0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
