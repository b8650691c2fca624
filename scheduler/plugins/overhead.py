"""What routers and verifiers cost: each judgement is an inference pass on a stated model and device.

A router reads the prompt before the request is placed (prefill of the prompt,
one output token); a verifier (an LLM judge) reads the prompt and the answer
after each pass (prefill of prompt + answer, one token). Each is priced on its
own instance at batch 1 with the same performance and power model as the
pools (workers/perf.py): its time is added to the request's latency (the pass
after it starts that much later), its energy (idle + dynamic power over that
time) and dollars (the instance's price over that time) to the run's.

Where the cluster has a pool running the judge's model on its device (a
`serving: judge` pool first, else a colocated pool serving that model), the
runtimes place the pass there instead (simulator/judges.py,
scheduler/live/judges.py): it queues behind that pool's work and costs what the
pool's engine says it costs. The batch-1 figures here are then only the
prediction; without such a pool they are the charge (unqueued: optimistic for
latency at high load, and the summary says which judgements ran where).

Defaults: the router is an LLM classifier the size of RouteLLM's causal-LLM
router (Ong et al., 2024, arXiv 2406.18665: Llama-3-8B fine-tuned to route),
here llama-3.1-8b on an H100; the verifier is llama-3.1-70b (fp8) on H100s.
`none` turns a judge's cost off.
"""
from __future__ import annotations

from dataclasses import dataclass

from scheduler.config import Serving
from scheduler.framework import param
from scheduler.types import Role
from scheduler.validation import ConfigError
from workers.devices import DEVICES, get_device
from workers.models import MODELS, load_model, with_dtype
from workers.perf import InstancePerf, chips_needed

NONE = "none"


@dataclass(frozen=True, slots=True)
class Overhead:
    """One judgement's cost: seconds added to the request, joules, dollars, and the device (for PUE)."""

    kind: str  # "router" or "verifier"
    seconds: float
    energy_j: float
    cost_usd: float
    device: str
    model: str = ""  # the judge's model as configured ("llama-3.1-70b")
    tokens: int = 0  # tokens the pass reads (its prompt); it writes one


def known_model(name: str) -> str | None:
    if name == NONE or name in MODELS:
        return None
    return f"unknown model {name!r}; built-ins: {', '.join(sorted(MODELS))}, or none"


def known_device(name: str) -> str | None:
    return None if name in DEVICES else f"unknown device {name!r}; known devices: {', '.join(sorted(DEVICES))}"


@dataclass(frozen=True, slots=True)
class RouterCostParams:
    router_model: str = param("llama-3.1-8b", doc="model the router runs to judge a prompt ('none': free)",
                              valid=known_model)
    router_device: str = param("h100-sxm", doc="device of the router's instance", valid=known_device)


@dataclass(frozen=True, slots=True)
class VerifierCostParams:
    verifier_model: str = param("llama-3.1-70b", doc="model the verifier (LLM judge) runs ('none': free)",
                                valid=known_model)
    verifier_device: str = param("h100-sxm", doc="device of the verifier's instance", valid=known_device)


class InferenceCost:
    """Batch-1 passes of `model` on the fewest chips of `device` that hold it (fp8 where the device has it)."""

    def __init__(self, kind: str, model: str, device: str, key: str):
        self.kind = kind
        self.device_name = device
        self.model_name = model
        try:
            dev = get_device(device)
            spec = load_model(model)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"policy param {key}: {exc.args[0] if exc.args else exc}") from None
        if dev.fp8_flops and spec.dtype_bytes > 1:
            spec = with_dtype(spec, 1.0)
        chips = chips_needed(dev, spec, min_kv_tokens=8192)
        if chips is None:
            raise ConfigError(f"policy param {key}: {spec.name} does not fit any {dev.name} instance")
        self.perf = InstancePerf(dev, spec, chips=chips)
        self._cache: dict[int, Overhead] = {}

    def cost(self, tokens: int) -> Overhead:
        """Read `tokens` and write one token."""
        hit = self._cache.get(tokens)
        if hit is None:
            perf = self.perf
            t_pre, e_pre = perf.prefill(tokens, tokens * (tokens + 1) / 2, 1)
            t_dec, e_dec = perf.decode(1, float(tokens), 1)
            seconds = t_pre + t_dec
            hit = Overhead(self.kind, seconds, perf.idle_power_w * seconds + e_pre + e_dec,
                           perf.price_usd_per_s * seconds, self.device_name, self.model_name, tokens)
            if len(self._cache) < 65536:
                self._cache[tokens] = hit
        return hit


def router_cost(params) -> InferenceCost | None:
    if params.router_model == NONE:
        return None
    return InferenceCost("router", params.router_model, params.router_device, "router_model")


def verifier_cost(params) -> InferenceCost | None:
    if params.verifier_model == NONE:
        return None
    return InferenceCost("verifier", params.verifier_model, params.verifier_device, "verifier_model")


def judge_pool(cluster, model: str, device: str):
    """The pool that runs judgements of `model` on `device`: a judge pool (`serving: judge`) first,
    else a pool serving that model there; colocated (a judgement is one prefill and one token).
    None when there is none: the judgement is then charged at batch 1 (InferenceCost)."""
    fits = [p for p in cluster.pools if p.config.model == model and p.config.device == device
            and p.role == Role.BOTH and p.config.serving != Serving.OWN_DEVICE]
    fits.sort(key=lambda p: p.config.serving != Serving.JUDGE)
    return fits[0] if fits else None
