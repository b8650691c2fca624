"""A model's shape: the handful of integers from its config.json that cost time and memory.

Weight values never change timing, so a model is reduced to its shape plus
bytes per weight element. One dataclass covers dense Llama-style decoders and
mixture-of-experts models (DeepSeek, Qwen3-MoE, gpt-oss, Llama 4, Mixtral):

- attention: grouped-query (q, k, v, o), or multi-head latent attention
  (MLA, `kv_lora_rank` set) whose cache holds one compressed latent of
  kv_lora_rank + qk_rope_dim elements per token and layer;
- MLP: SwiGLU (gate, up, down); after `dense_layers` leading dense layers,
  every `moe_layer_step`-th layer is a MoE layer of `experts` routed experts
  (top `experts_per_token`) plus `shared_experts` always-on experts, each of
  width `expert_ffn`;
- sliding windows: with `sliding_window` set, every layer but each
  `sliding_window_pattern`-th one (Gemma's convention; unset: all layers)
  attends to and caches only the last `sliding_window` tokens;
- weight widths per part: `dtype_bytes` (attention, dense MLP, shared
  experts, router), `expert_dtype_bytes` (routed experts: MXFP4 in gpt-oss)
  and `embedding_dtype_bytes` (embedding and lm_head: bf16 in fp8 checkpoints).

Norm vectors and biases are left out of MoE-specific counts (well under 0.1%
of any built-in). Everything here is exact integer/float arithmetic on the
shape; workers/perf.py turns it into time and joules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec", "ModelSpecError", "REQUIRED_KEYS", "OPTIONAL_KEYS", "spec_from_mapping"]


class ModelSpecError(ValueError):
    """A model spec (built-in or file) is malformed; the message names the file and key."""


REQUIRED_KEYS: tuple[str, ...] = (
    "name", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "dtype_bytes",
)
OPTIONAL_KEYS: tuple[str, ...] = (
    "kv_dtype_bytes", "tied_embeddings", "capability", "head_dim",
    "experts", "experts_per_token", "shared_experts", "expert_ffn", "dense_layers", "moe_layer_step",
    "routing_skew", "kv_lora_rank", "qk_rope_dim", "q_lora_rank",
    "sliding_window", "sliding_window_pattern", "expert_dtype_bytes", "embedding_dtype_bytes", "context_tokens",
)
_POSITIVE_INT = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")
# Optional integers: None (unset) or >= their minimum.
_OPTIONAL_INT_MIN = {"head_dim": 1, "experts": 1, "experts_per_token": 1, "shared_experts": 0,
                     "expert_ffn": 1, "dense_layers": 0, "moe_layer_step": 1, "kv_lora_rank": 1,
                     "qk_rope_dim": 0, "q_lora_rank": 1, "sliding_window": 1, "sliding_window_pattern": 1,
                     "context_tokens": 1}
_WIDTH_KEYS = ("dtype_bytes", "kv_dtype_bytes", "expert_dtype_bytes", "embedding_dtype_bytes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of one decoder-only model; see the module docstring for the keys.

    `kv_dtype_bytes` defaults to the weight width, except that sub-byte weight
    formats keep a bf16 cache (int4 KV caches are rare in serving engines).
    `capability` is a quality score in [0, 1] that tier routing compares.
    `routing_skew` is the Zipf exponent of how often each routed expert is
    chosen: 0 is uniform routing, larger values concentrate tokens on fewer
    experts (fewer distinct experts read per decode step).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    dtype_bytes: float
    kv_dtype_bytes: float | None = None
    tied_embeddings: bool = False
    capability: float | None = None
    head_dim: int | None = None
    experts: int | None = None
    experts_per_token: int | None = None
    shared_experts: int = 0
    expert_ffn: int | None = None
    dense_layers: int = 0
    moe_layer_step: int = 1
    routing_skew: float = 0.0
    kv_lora_rank: int | None = None
    qk_rope_dim: int | None = None
    q_lora_rank: int | None = None
    sliding_window: int | None = None
    sliding_window_pattern: int | None = None
    expert_dtype_bytes: float | None = None
    embedding_dtype_bytes: float | None = None
    # Longest sequence (prompt + output) the model takes; None: not stated (no bound
    # beyond KV memory). The live scheduler refuses longer requests.
    context_tokens: int | None = None
    # Where each value comes from (config.json keys, model cards); not part of the value.
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ModelSpecError(f"model {self.name!r}: {key}: {reason}")

        if not isinstance(self.name, str) or not self.name:
            raise ModelSpecError(f"name: must be a non-empty string, got {self.name!r}")
        for key in _POSITIVE_INT:
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                fail(key, f"must be a positive integer, got {value!r}")
        for key, minimum in _OPTIONAL_INT_MIN.items():
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < minimum):
                fail(key, f"must be an integer >= {minimum}, got {value!r}")
        if self.heads % self.kv_heads:
            fail("kv_heads", f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim is None:
            if self.hidden % self.heads:
                fail("head_dim", f"hidden ({self.hidden}) is not divisible by heads ({self.heads}); set it")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        for key in _WIDTH_KEYS:
            value = getattr(self, key)
            if value is not None and (not _is_number(value) or value <= 0):
                fail(key, f"must be a positive number of bytes, got {value!r}")
        if self.kv_dtype_bytes is None:
            object.__setattr__(self, "kv_dtype_bytes", float(self.dtype_bytes) if self.dtype_bytes >= 1 else 2.0)
        if not isinstance(self.tied_embeddings, bool):
            fail("tied_embeddings", "must be true or false")
        if self.capability is not None and (not _is_number(self.capability) or not 0.0 <= self.capability <= 1.0):
            fail("capability", f"must be a number in [0, 1], got {self.capability!r}")
        if not _is_number(self.routing_skew) or self.routing_skew < 0:
            fail("routing_skew", f"must be a number >= 0, got {self.routing_skew!r}")
        self._check_moe(fail)
        if (self.kv_lora_rank is None) != (self.qk_rope_dim is None):
            fail("kv_lora_rank" if self.kv_lora_rank is None else "qk_rope_dim",
                 "MLA needs both kv_lora_rank and qk_rope_dim")
        if self.q_lora_rank is not None and self.kv_lora_rank is None:
            fail("q_lora_rank", "only applies to MLA attention (set kv_lora_rank and qk_rope_dim)")
        if self.sliding_window_pattern is not None and self.sliding_window is None:
            fail("sliding_window_pattern", "needs sliding_window")

    def _check_moe(self, fail) -> None:
        moe_only = ("experts_per_token", "expert_ffn", "expert_dtype_bytes")
        if self.experts is None:
            for key in moe_only:
                if getattr(self, key) is not None:
                    fail(key, "needs experts (the number of routed experts)")
            for key, default in (("shared_experts", 0), ("dense_layers", 0), ("moe_layer_step", 1),
                                 ("routing_skew", 0.0)):
                if getattr(self, key) != default:
                    fail(key, "needs experts (the number of routed experts)")
            return
        if self.experts_per_token is None:
            fail("experts_per_token", "required with experts")
        if self.experts_per_token > self.experts:
            fail("experts_per_token", f"must be at most experts ({self.experts}), got {self.experts_per_token}")
        if self.dense_layers >= self.layers:
            fail("dense_layers", f"must be below layers ({self.layers}), got {self.dense_layers}")
        if self.moe_layers == 0:
            fail("moe_layer_step", f"leaves no MoE layer among {self.layers} layers")

    # --- widths -------------------------------------------------------------------
    @property
    def expert_width(self) -> float:
        return float(self.dtype_bytes if self.expert_dtype_bytes is None else self.expert_dtype_bytes)

    @property
    def embedding_width(self) -> float:
        return float(self.dtype_bytes if self.embedding_dtype_bytes is None else self.embedding_dtype_bytes)

    # --- layer kinds ------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def moe_layers(self) -> int:
        """Layers with routed experts: after the dense ones, layer i when (i + 1) % moe_layer_step == 0
        (Hugging Face's interleave_moe_layer_step: Llama 4 Maverick alternates dense and MoE)."""
        if self.experts is None:
            return 0
        step = self.moe_layer_step
        return sum(1 for i in range(self.dense_layers, self.layers) if (i + 1) % step == 0)

    @property
    def window_layers(self) -> int:
        """Layers attending to the last `sliding_window` tokens only (every pattern-th layer is full)."""
        if self.sliding_window is None:
            return 0
        if self.sliding_window_pattern is None:
            return self.layers
        return self.layers - self.layers // self.sliding_window_pattern

    # --- parameter counts by part -------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim  # type: ignore[operator]

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim  # type: ignore[operator]

    @property
    def attn_params_per_layer(self) -> int:
        h, hd = self.hidden, self.head_dim
        if not self.is_mla:
            return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        rope, rank = self.qk_rope_dim, self.kv_lora_rank
        q_out = self.heads * (hd + rope)  # type: ignore[operator]
        q = h * q_out if self.q_lora_rank is None else h * self.q_lora_rank + self.q_lora_rank * q_out
        kv = h * (rank + rope) + rank * self.heads * 2 * hd  # type: ignore[operator]
        return q + kv + self.q_dim * h

    @property
    def expert_params(self) -> int:
        """One expert's gate, up and down matrices."""
        return 3 * self.hidden * (self.ffn if self.expert_ffn is None else self.expert_ffn)

    @property
    def routed_expert_params(self) -> int:
        return self.moe_layers * (self.experts or 0) * self.expert_params

    @property
    def dense_params(self) -> int:
        """Matrices every token runs through: attention, dense MLPs, shared experts, routers (no embeddings)."""
        dense_mlp = (self.layers - self.moe_layers) * 3 * self.hidden * self.ffn
        moe_always = self.moe_layers * (self.shared_experts * self.expert_params + self.hidden * (self.experts or 0))
        return self.layers * self.attn_params_per_layer + dense_mlp + moe_always

    @property
    def layer_matmul_params(self) -> int:
        """Matrix parameters of all decoder layers, every expert included."""
        return self.dense_params + self.routed_expert_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        """Output projection; with tied embeddings it is the embedding matrix, still read every step."""
        return self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        """Exact stored parameter count (8,030,261,248 for Llama-3.1-8B)."""
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.embedding_params + self.layer_matmul_params + self.norm_params + head

    @property
    def active_params(self) -> int:
        """Parameters one token runs through: all but the unchosen routed experts."""
        if not self.is_moe:
            return self.params
        return self.params - self.moe_layers * (self.experts - self.experts_per_token) * self.expert_params

    # --- bytes ----------------------------------------------------------------------
    @property
    def weight_bytes(self) -> float:
        """Bytes the weights occupy in device memory."""
        head = 0 if self.tied_embeddings else self.lm_head_params
        return ((self.dense_params + self.norm_params) * float(self.dtype_bytes)
                + self.routed_expert_params * self.expert_width
                + (self.embedding_params + head) * self.embedding_width)

    @property
    def dense_streamed_bytes(self) -> float:
        """Weights every forward pass reads whatever the routing: all but the routed experts and
        the embedding table (gathered a few rows at a time)."""
        return ((self.dense_params + self.norm_params) * float(self.dtype_bytes)
                + self.lm_head_params * self.embedding_width)

    @property
    def expert_bytes(self) -> float:
        """One routed expert of one layer."""
        return self.expert_params * self.expert_width

    @property
    def streamed_weight_bytes(self) -> float:
        """Weights read by a pass that touches every expert (a dense model's whole stream)."""
        return self.dense_streamed_bytes + self.routed_expert_params * self.expert_width

    def experts_touched(self, tokens: float) -> float:
        """Expected distinct routed experts per MoE layer that `tokens` tokens select.

        Uniform routing (routing_skew 0): each token picks experts_per_token of E at
        random, so an expert is missed by all with probability (1 - k/E)^tokens and
        E * (1 - (1 - k/E)^tokens) are touched. With skew s, expert i is chosen by a
        token with probability q_i proportional to (i + 1)^-s (Zipf), capped at 1 and
        scaled so the q_i sum to k; tokens choose independently.
        """
        if self.experts is None or tokens <= 0:
            return 0.0
        e, k = self.experts, self.experts_per_token
        if self.routing_skew == 0.0:
            return e * (1.0 - (1.0 - k / e) ** tokens)
        return sum(1.0 - (1.0 - q) ** tokens for q in self.expert_choice_probabilities())

    def expert_choice_probabilities(self) -> list[float]:
        """Per routed expert, the chance one token chooses it (sums to experts_per_token)."""
        e, k = self.experts or 0, self.experts_per_token or 0
        weights = [(i + 1.0) ** -self.routing_skew for i in range(e)]
        capped: set[int] = set()
        while True:  # water-filling: cap the most popular at 1, share the rest of k by weight
            scale = (k - len(capped)) / sum(w for i, w in enumerate(weights) if i not in capped)
            over = {i for i, w in enumerate(weights) if i not in capped and w * scale >= 1.0}
            if not over:
                return [1.0 if i in capped else w * scale for i, w in enumerate(weights)]
            capped |= over

    @property
    def kv_bytes_per_token_layer(self) -> float:
        """Cache bytes of one token in one layer: K and V heads, or MLA's compressed latent."""
        if self.is_mla:
            return (self.kv_lora_rank + self.qk_rope_dim) * float(self.kv_dtype_bytes)  # type: ignore[operator]
        return 2.0 * self.kv_dim * float(self.kv_dtype_bytes)  # type: ignore[arg-type]

    @property
    def kv_bytes_per_token(self) -> float:
        """KV bytes a token adds in the full-attention layers (131,072 B for Llama-3.1-8B in bf16);
        windowed layers add window_kv_bytes_per_token, for the last sliding_window tokens only."""
        return (self.layers - self.window_layers) * self.kv_bytes_per_token_layer

    @property
    def window_kv_bytes_per_token(self) -> float:
        return self.window_layers * self.kv_bytes_per_token_layer

    def kv_bytes(self, tokens: float) -> float:
        """Cache bytes of one sequence holding `tokens` tokens."""
        window = 0.0 if self.sliding_window is None else min(tokens, self.sliding_window)
        return tokens * self.kv_bytes_per_token + window * self.window_kv_bytes_per_token

    # --- FLOPs ----------------------------------------------------------------------
    @property
    def flops_per_token(self) -> float:
        """Matmul FLOPs of the decoder layers for one token (2 per multiply-add, active experts only),
        excluding lm_head."""
        routed = self.moe_layers * (self.experts_per_token or 0) * self.expert_params
        return 2.0 * (self.dense_params + routed)

    @property
    def lm_head_flops(self) -> float:
        """FLOPs to turn one hidden state into logits."""
        return 2.0 * self.lm_head_params

    def _attn_flops_per_pair_layer(self, absorbed: bool) -> float:
        if not self.is_mla:
            return 4.0 * self.q_dim  # QK^T and PV, 2 * head_dim per query head each
        if absorbed:
            # Decode engines (FlashMLA) fold the up-projections into the query and output:
            # every head scores and sums the latent itself (rank + rope, then rank wide).
            return 2.0 * self.heads * (2 * self.kv_lora_rank + self.qk_rope_dim)  # type: ignore[operator]
        return 2.0 * self.heads * (2 * self.head_dim + self.qk_rope_dim)  # type: ignore[operator]

    @property
    def attn_flops_per_pair(self) -> float:
        """Prefill FLOPs per (query, key) pair across the full-attention layers."""
        return (self.layers - self.window_layers) * self._attn_flops_per_pair_layer(False)

    @property
    def window_attn_flops_per_pair(self) -> float:
        return self.window_layers * self._attn_flops_per_pair_layer(False)

    @property
    def decode_attn_flops_per_pair(self) -> float:
        """Decode FLOPs per (query, key) pair across the full-attention layers (MLA absorbed)."""
        return (self.layers - self.window_layers) * self._attn_flops_per_pair_layer(True)

    @property
    def window_decode_attn_flops_per_pair(self) -> float:
        return self.window_layers * self._attn_flops_per_pair_layer(True)


def spec_from_mapping(data: dict[str, Any], origin: str) -> ModelSpec:
    """A ModelSpec from a parsed spec file; every error reads `origin: key: reason`."""
    allowed = REQUIRED_KEYS + OPTIONAL_KEYS
    for key in data:
        if key not in allowed:
            raise ModelSpecError(f"{origin}: {key}: unknown key; allowed keys: {', '.join(allowed)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ModelSpecError(f"{origin}: {key}: missing required key")
    for key, value in data.items():
        if key == "name":
            ok, expected = isinstance(value, str) and bool(value), "a non-empty string"
        elif key == "tied_embeddings":
            ok, expected = isinstance(value, bool), "true or false"
        elif key in _POSITIVE_INT or key in _OPTIONAL_INT_MIN:
            ok, expected = value is None or _is_int(value), "an integer"
        else:
            ok, expected = value is None or _is_number(value), "a number"
        if not ok:
            raise ModelSpecError(f"{origin}: {key}: must be {expected}, got {value!r}")
    if data.get("routing_skew") is None:
        data = {k: v for k, v in data.items() if k != "routing_skew"}
    for key in ("shared_experts", "dense_layers", "moe_layer_step"):
        if key in data and data[key] is None:
            data = {k: v for k, v in data.items() if k != key}
    try:
        return ModelSpec(**data)
    except ModelSpecError as exc:
        # "model 'x': key: reason" -> "origin: key: reason"
        text = str(exc)
        prefix = f"model {data.get('name')!r}: "
        raise ModelSpecError(f"{origin}: {text[len(prefix):] if text.startswith(prefix) else text}") from None
