"""Model shapes: what a decoder-only transformer costs in parameters, bytes and FLOPs.

Only the shape matters to the performance model (weight values never change
timing), so a model is its config.json reduced to a handful of integers plus
the bytes per weight element. Counts assume the Llama architecture: token
embedding, per layer RMSNorm + grouped-query attention (q, k, v, o) + RMSNorm
+ SwiGLU MLP (gate, up, down), final RMSNorm, lm_head; no biases.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ModelSpec",
    "ModelSpecError",
    "UnknownModelError",
    "MODELS",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "get_model",
    "load_model",
    "with_dtype",
]


class ModelSpecError(ValueError):
    """A model spec (built-in or file) is malformed; the message names the file and key."""


class UnknownModelError(KeyError):
    """A model name is neither a built-in nor an existing spec file."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


REQUIRED_KEYS: tuple[str, ...] = (
    "name", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "dtype_bytes",
)
OPTIONAL_KEYS: tuple[str, ...] = ("kv_dtype_bytes", "tied_embeddings", "capability", "head_dim")

# Names for the common weight widths, used to label quantized variants.
_DTYPE_LABELS: dict[float, str] = {4.0: "fp32", 2.0: "bf16", 1.0: "fp8", 0.5: "int4"}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a Llama-style decoder.

    `dtype_bytes` is bytes per weight element (0.5 for int4); `kv_dtype_bytes`
    is bytes per KV-cache element and defaults to the weight width, except that
    sub-byte weight formats keep a bf16 cache because int4 KV caches are rare
    in serving engines. `capability` is an optional quality score in [0, 1]
    (the built-ins use MMLU / 100) that tier routing compares across models.
    `head_dim` defaults to hidden // heads; set it for models that decouple
    the two (it is not a Llama 3 key, so built-ins leave it unset).
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModelSpecError(f"model name must be a non-empty string, got {self.name!r}")
        for key in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelSpecError(f"model {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise ModelSpecError(
                f"model {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ModelSpecError(
                    f"model {self.name!r}: hidden ({self.hidden}) is not divisible by heads ({self.heads}); "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ModelSpecError(f"model {self.name!r}: head_dim must be a positive integer, got {self.head_dim!r}")
        _check_width(self.name, "dtype_bytes", self.dtype_bytes)
        if self.kv_dtype_bytes is None:
            object.__setattr__(self, "kv_dtype_bytes", float(self.dtype_bytes) if self.dtype_bytes >= 1 else 2.0)
        else:
            _check_width(self.name, "kv_dtype_bytes", self.kv_dtype_bytes)
        if not isinstance(self.tied_embeddings, bool):
            raise ModelSpecError(f"model {self.name!r}: tied_embeddings must be true or false")
        if self.capability is not None:
            if (isinstance(self.capability, bool) or not isinstance(self.capability, (int, float))
                    or not 0.0 <= self.capability <= 1.0):
                raise ModelSpecError(f"model {self.name!r}: capability must be a number in [0, 1], got {self.capability!r}")

    # --- parameter counts -------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim  # type: ignore[operator]

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim  # type: ignore[operator]

    @property
    def layer_matmul_params(self) -> int:
        """Matrix parameters of all decoder layers (attention q/k/v/o + SwiGLU gate/up/down)."""
        h = self.hidden
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        mlp = 3 * h * self.ffn
        return self.layers * (attn + mlp)

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
    def weight_bytes(self) -> float:
        """Bytes the weights occupy in device memory."""
        return self.params * float(self.dtype_bytes)

    @property
    def streamed_weight_bytes(self) -> float:
        """Bytes of weights read per forward pass: every matrix except the embedding table,
        which is gathered a few rows at a time. Norm vectors are included for completeness."""
        return (self.layer_matmul_params + self.lm_head_params + self.norm_params) * float(self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V for one token across all layers: 131,072 B for Llama-3.1-8B in bf16."""
        return 2.0 * self.layers * self.kv_dim * float(self.kv_dtype_bytes)  # type: ignore[arg-type]

    # --- FLOPs ----------------------------------------------------------------
    @property
    def flops_per_token(self) -> float:
        """Matmul FLOPs of the decoder layers for one token (2 per multiply-add), excluding lm_head."""
        return 2.0 * self.layer_matmul_params

    @property
    def lm_head_flops(self) -> float:
        """FLOPs to turn one hidden state into logits."""
        return 2.0 * self.lm_head_params

    @property
    def attn_flops_per_pair(self) -> float:
        """FLOPs per (query, key) pair across all layers: QK^T and PV, each 2*head_dim per query head."""
        return 4.0 * self.layers * self.q_dim


def _check_width(name: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or not math.isfinite(value):
        raise ModelSpecError(f"model {name!r}: {key} must be a positive number of bytes, got {value!r}")


def _llama(name: str, layers: int, hidden: int, heads: int, ffn: int, tied: bool, capability: float) -> ModelSpec:
    # Every Llama 3.x release uses 8 KV heads, a 128,256-token vocabulary and bf16 weights.
    return ModelSpec(name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=8, ffn=ffn,
                     vocab=128256, dtype_bytes=2, tied_embeddings=tied, capability=capability)


# Shapes from each model's config.json on the Hugging Face Hub (meta-llama/<name>);
# capability is MMLU (5-shot, instruction-tuned) from Meta's model cards, divided by 100.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # meta-llama/Llama-3.2-1B config.json; MMLU 49.3 (Llama 3.2 model card).
        _llama("llama-3.2-1b", layers=16, hidden=2048, heads=32, ffn=8192, tied=True, capability=0.493),
        # meta-llama/Llama-3.2-3B config.json; MMLU 63.4 (Llama 3.2 model card).
        _llama("llama-3.2-3b", layers=28, hidden=3072, heads=24, ffn=8192, tied=True, capability=0.634),
        # meta-llama/Llama-3.1-8B config.json; MMLU 69.4 (Llama 3.1 model card, instruct).
        _llama("llama-3.1-8b", layers=32, hidden=4096, heads=32, ffn=14336, tied=False, capability=0.694),
        # meta-llama/Llama-3.1-70B config.json; MMLU 83.6 (Llama 3.1 model card, instruct).
        _llama("llama-3.1-70b", layers=80, hidden=8192, heads=64, ffn=28672, tied=False, capability=0.836),
        # meta-llama/Llama-3.1-405B config.json; MMLU 87.3 (Llama 3.1 model card, instruct).
        _llama("llama-3.1-405b", layers=126, hidden=16384, heads=128, ffn=53248, tied=False, capability=0.873),
    )
}


def get_model(name: str) -> ModelSpec:
    """A built-in model by name."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; built-ins: {', '.join(sorted(MODELS))} (or pass a .json/.yaml spec file)"
        ) from None


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A built-in model name, or a JSON/YAML file holding exactly the ModelSpec keys.

    Required: name, layers, hidden, heads, kv_heads, ffn, vocab, dtype_bytes.
    Optional: kv_dtype_bytes, tied_embeddings, capability, head_dim.
    Any other key is an error, so a typo ("kv_head") is not silently ignored.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UnknownModelError(
            f"unknown model {str(name_or_path)!r}: not a built-in ({', '.join(sorted(MODELS))}) and no such file"
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ModelSpecError(f"{path}: cannot parse model spec: {exc}") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: model spec must be a mapping of keys to values, got {type(data).__name__}")
    return _spec_from_mapping(data, str(path))


_INT_KEYS = frozenset({"layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "head_dim"})
_NUMBER_KEYS = frozenset({"dtype_bytes", "kv_dtype_bytes", "capability"})


def _spec_from_mapping(data: dict[str, Any], origin: str) -> ModelSpec:
    for key in data:
        if key not in REQUIRED_KEYS and key not in OPTIONAL_KEYS:
            raise ModelSpecError(
                f"{origin}: unknown key {key!r}; allowed keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
            )
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ModelSpecError(f"{origin}: missing required key {key!r}")
    for key, value in data.items():
        if key == "name":
            ok = isinstance(value, str) and bool(value)
            expected = "a non-empty string"
        elif key == "tied_embeddings":
            ok = isinstance(value, bool)
            expected = "true or false"
        elif key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        else:
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            expected = "a number"
        if not ok:
            raise ModelSpecError(f"{origin}: key {key!r} must be {expected}, got {value!r}")
    try:
        return ModelSpec(**data)
    except ModelSpecError as exc:
        raise ModelSpecError(f"{origin}: {exc}") from None


def with_dtype(model: ModelSpec, dtype_bytes: float, kv_dtype_bytes: float | None = None,
               name: str | None = None) -> ModelSpec:
    """The same shape stored at another width (fp8 = 1, int4 = 0.5 bytes per weight).

    The KV width is re-derived from the new weight width unless given, and the
    name gains a suffix ("llama-3.1-8b-int4") so variants stay distinguishable.
    """
    if name is None:
        label = _DTYPE_LABELS.get(float(dtype_bytes), f"{dtype_bytes:g}B")
        name = f"{model.name}-{label}"
    return dataclasses.replace(model, name=name, dtype_bytes=dtype_bytes, kv_dtype_bytes=kv_dtype_bytes)
