"""A cluster built from its config: pools of instances with their performance models,
and the snapshot arrays the policy core reads.

Both runtimes (simulator and live control plane) build a `Cluster` and keep its
`ClusterSnapshot` current; the policy reads only the snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scheduler.config import (QUANTIZATION_BYTES, QUANTIZATION_CAPABILITY, Backend, ClusterConfig, ConfigError,
                              PoolConfig, Serving)
from scheduler.types import Role, Stage
from workers.devices import get_device
from workers.engine import BatchEngine
from workers.learned_perf import LearnedPerf
from workers.models import load_model, with_dtype
from workers.perf import InstancePerf, chips_needed
from workers.speculative import SpeculativePerf
from workers.kv_tiers import TierLru
from workers.prefix_cache import PrefixIndex, tiered_cache

@dataclass(frozen=True, slots=True)
class Pool:
    """One pool: identical instances of a device serving one model in one role."""

    index: int
    config: PoolConfig
    perf: InstancePerf
    first_instance: int  # global index of its first instance in the snapshot

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def role(self) -> Role:
        return self.config.role

    @property
    def instances(self) -> range:
        return range(self.first_instance, self.first_instance + self.config.instances)


def build_pool_perf(pool: PoolConfig, source: str = "<cluster>") -> InstancePerf | LearnedPerf:
    where = f"{source}: pool '{pool.name}'"
    if pool.backend == Backend.OPENAI and not pool.device:
        return LearnedPerf(pool.model, pool.context_tokens, pool.price_usd_per_hour)
    try:
        device = get_device(pool.device)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: key 'device': {exc.args[0] if exc.args else exc}") from None
    try:
        model = load_model(pool.model)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        hint = ("; with device: set, the served model must be in the catalogue (or a spec file) so latency can be "
                "predicted; leave device: out to learn it online") if pool.backend == Backend.OPENAI else ""
        raise ConfigError(f"{where}: key 'model': {exc.args[0] if exc.args else exc}{hint}") from None
    if pool.quantization is not None:
        model = with_dtype(model, QUANTIZATION_BYTES[pool.quantization])
        if model.capability is not None and pool.quantization in QUANTIZATION_CAPABILITY:
            model = replace(model, capability=model.capability * QUANTIZATION_CAPABILITY[pool.quantization])

    def make(chips: int) -> InstancePerf:
        if pool.speculative is not None:
            return speculative_pool_perf(pool, device, model, chips, where)
        return InstancePerf(device, model, chips=chips, price_usd_per_hour=pool.price_usd_per_hour,
                            memory_utilization=pool.memory_utilization, max_seqs=pool.max_batch)

    if pool.chips_per_instance is None:
        # The fewest chips that hold the weights plus one full prefill batch of KV.
        chips = chips_needed(device, model, min_kv_tokens=pool.max_batch_tokens,
                             memory_utilization=pool.memory_utilization, max_seqs=pool.max_batch)
        if chips is None:
            raise ConfigError(f"{where}: {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) with "
                              f"{pool.max_batch_tokens} tokens of KV does not fit in any {device.name} instance "
                              f"(at most {device.max_chips_per_instance} chips)")
        return make(chips)
    try:
        perf = make(pool.chips_per_instance)
    except ValueError as exc:
        raise ConfigError(f"{where}: key 'chips_per_instance': {exc}") from None
    if not perf.fits:
        raise ConfigError(
            f"{where}: {model.name} ({perf.weight_bytes / 1e9:.1f} GB of weights) does not fit in "
            f"{pool.chips_per_instance} x {device.name} "
            f"({pool.chips_per_instance * device.memory_bytes / 1e9:.1f} GB); raise chips_per_instance "
            "or set it to auto")
    return perf


def speculative_pool_perf(pool: PoolConfig, device, model, chips: int, where: str) -> SpeculativePerf:
    """A pool's instance with its `speculative:` draft (at the pool's quantization, as the model)."""
    key = f"{where}: key 'speculative.draft_model'"
    try:
        draft = load_model(pool.speculative.draft_model)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{key}: {exc.args[0] if exc.args else exc}") from None
    if pool.quantization is not None:
        draft = with_dtype(draft, QUANTIZATION_BYTES[pool.quantization])
    try:
        perf = SpeculativePerf(device, model, draft, pool.speculative, chips=chips,
                               price_usd_per_hour=pool.price_usd_per_hour,
                               memory_utilization=pool.memory_utilization, max_seqs=pool.max_batch)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not perf.fits:
        raise ConfigError(f"{key}: {draft.name} beside {model.name} leaves no KV room in {chips} x {device.name}; "
                          "raise chips_per_instance")
    return perf


class ClusterSnapshot:
    """Per-instance state as numpy arrays, indexed by global instance id.

    Static columns describe the hardware; dynamic columns are written by the
    runtime through `update` after every change to an instance (O(1) per
    change), so a policy decision reads arrays and never walks engines.
    Derived columns (`load`, `backlog_s`) are kept here too, so each scorer is
    a handful of array operations: on this class of machine a numpy call on a
    small array costs about a microsecond, and the simulator's whole budget
    is ~30 us per request.
    """

    DYNAMIC_COLUMNS = (
        "queued_requests",  # waiting for prefill or for a decode slot
        "queued_tokens",  # prompt tokens waiting for prefill
        "running",  # sequences in the decode batch
        "kv_free",  # tokens of KV not reserved
        "busy_until_s",  # end of the current iteration (0 when idle)
        # Derived:
        "load",  # (queued + running) / max_batch
        "load_score",  # 1 / (1 + load): the least-loaded score, kept here to save three array ops a decision
        "ready_s",  # when a new prompt could start prefill: iteration end + queued prompts' prefill
        # Predicted decode step time with one more sequence of X context tokens is
        # tpot_base_s + X * tpot_per_token_s (queueing for a slot included).
        "tpot_base_s",
        "tpot_per_token_s",
    )

    def __init__(self, pools: list[Pool]):
        n = sum(p.config.instances for p in pools)
        self.n_instances = n
        self.n_pools = len(pools)
        self.pool = np.empty(n, dtype=np.int64)
        self.role = np.empty(n, dtype=np.int64)
        # Instances of judge pools (`serving: judge`): routers' and verifiers' passes only, never a
        # request's candidates, and their models are no tier (simulator/judges.py places there).
        serves = np.ones(n, dtype=bool)
        for p in pools:
            self.pool[p.instances.start:p.instances.stop] = p.index
            self.role[p.instances.start:p.instances.stop] = int(p.role)
            serves[p.instances.start:p.instances.stop] = p.config.serving != Serving.JUDGE
        # Static, per pool.
        self.pool_kv_capacity = np.array([p.perf.kv_capacity_tokens for p in pools], dtype=np.float64)
        self.pool_max_batch = np.array([p.config.max_batch for p in pools], dtype=np.float64)
        self.pool_price_usd_per_s = np.array([p.perf.price_usd_per_s for p in pools], dtype=np.float64)
        self.pool_capability = np.array(
            [p.perf.model.capability if p.perf.model.capability is not None else 1.0 for p in pools])
        self.pool_model = [p.perf.model.name for p in pools]
        # Same id <=> same model, so KV from one pool is usable in the other.
        self.pool_model_id = np.array([self.pool_model.index(m) for m in self.pool_model], dtype=np.int64)
        # Latency predictors fitted to the performance model, per pool:
        #   prefill_s(n) ~ a + b*n + c*n^2,   decode step_s ~ d + e*batch + f*context_tokens
        self.pool_prefill_coef = np.array([_prefill_coefficients(p.perf) for p in pools])
        self.pool_decode_coef = np.array([_decode_coefficients(p.perf) for p in pools])
        # The same, spread per instance (policies index them by candidate id directly).
        self.kv_capacity = self.pool_kv_capacity[self.pool].copy()
        self.max_batch = self.pool_max_batch[self.pool].copy()
        self._inv_max_batch = (1.0 / self.max_batch).tolist()
        self._prefill_a = self.pool_prefill_coef[self.pool, 0].tolist()
        self._prefill_b = self.pool_prefill_coef[self.pool, 1].tolist()
        self.pool_prefill_a_s, self.pool_prefill_b_s, self.pool_prefill_c_s = self.pool_prefill_coef.T.copy()
        self._decode_coef = [tuple(row) for row in self.pool_decode_coef[self.pool].tolist()]
        self._kv_capacity = self.kv_capacity.tolist()
        self._learned_prefill: dict[int, dict[int, float]] = {}  # pool -> instance -> measured prefill s/token
        # Dynamic columns: separate contiguous arrays (a gather from a strided view
        # costs twice as much, and writing a strided column from a tuple more than
        # seven scalar stores).
        for name in self.DYNAMIC_COLUMNS:
            setattr(self, name, np.zeros(n))
        # `update` writes through memoryviews of the same memory: an item store costs about
        # two thirds of numpy's (`update` runs ~2.4 times a simulated request).
        self._views = tuple(memoryview(getattr(self, name)) for name in self.DYNAMIC_COLUMNS)
        # Python-list copies of the columns the scalar predictors read (`*_list` below): on a
        # stage of a few candidates, list arithmetic beats numpy's ~0.5 us per call. Kept from
        # the first call of one of them on (`keep_lists`): three more stores a row write, which
        # runtimes whose policies never read them (least-loaded, stages of many) do not pay.
        self.lists = False
        self._ready: list[float] = []
        self._tpot_base: list[float] = []
        self._tpot_per_token: list[float] = []
        self._pool_list = self.pool.tolist()
        for i in range(n):
            self.update(i, 0, 0, 0, self._kv_capacity[i], 0.0)
        # Candidate sets per stage, fixed by role.
        self.candidates = {
            Stage.PREFILL: np.flatnonzero((self.role != int(Role.DECODE)) & serves),
            Stage.DECODE: np.flatnonzero((self.role == int(Role.DECODE)) & serves),
        }
        # Per stage, what every candidate can hold / serve, so filters can prove
        # "all pass" with one scalar comparison instead of an array mask.
        self.min_capacity = {st: (float(self.kv_capacity[c].min()) if len(c) else 0.0)
                             for st, c in self.candidates.items()}
        self.min_capability = {st: (float(self.pool_capability[self.pool[c]].min()) if len(c) else 0.0)
                               for st, c in self.candidates.items()}
        self.single_model = len(set(self.pool_model)) == 1
        # Per stage, the one pool every candidate belongs to (-1 when several): there a prompt's
        # predicted prefill time is one number, not a per-candidate gather.
        self.stage_pool = {st: (int(self.pool[c[0]]) if len(c) and len(set(self.pool[c].tolist())) == 1 else -1)
                           for st, c in self.candidates.items()}
        self._pool_prefill_abc = [tuple(row) for row in self.pool_prefill_coef.tolist()]
        # Prefix caches' holdings, block id -> instance bitmask (workers/prefix_cache.py); set by
        # the runtime when requests carry block hashes, else None and prefix scorers stay neutral.
        self.prefix_index: PrefixIndex | None = None
        self.prefix_block_tokens = 0
        # Below HBM: one index per tier position (tier k of every instance), and the shared store
        # when the cluster serves one model (its blocks are that model's KV), else None.
        self.prefix_tier_indexes: tuple[PrefixIndex, ...] = ()
        self.prefix_store: TierLru | None = None
        self.all_instances_mask = (1 << n) - 1
        self._init_economics(pools, [p.config.serving != Serving.JUDGE for p in pools])
        self._init_own_devices(pools)

    def _init_own_devices(self, pools: list[Pool]) -> None:
        """Own-device pools (`serving: own-device`): instance k of such a pool is user k's device,
        and request r belongs to user r mod instances, so it may use only that one instance
        there. `own_device` is None when no pool serves that way (the common case costs nothing)."""
        own = [(p.first_instance, p.config.instances) for p in pools if p.config.serving == Serving.OWN_DEVICE]
        self.own_device: tuple[tuple[int, int], ...] | None = tuple(own) or None
        if own:
            in_own = np.zeros(self.n_instances, dtype=bool)
            for first, count in own:
                in_own[first:first + count] = True
            self._shared_prefill = self.candidates[Stage.PREFILL][~in_own[self.candidates[Stage.PREFILL]]]

    def own_device_candidates(self, request_id: int) -> np.ndarray:
        """The prefill candidates of one request: every pooled instance plus its user's own devices."""
        mine = [first + request_id % count for first, count in self.own_device]
        return np.sort(np.concatenate([self._shared_prefill, np.array(mine, dtype=self._shared_prefill.dtype)]))

    def _init_economics(self, pools: list[Pool], serving: list[bool]) -> None:
        """Static columns the tier, cost and energy plugins read (computed once per cluster).

        A request's predicted dollars (joules) on an instance are the seconds it
        occupies that instance times its price (its average power while busy):
        prefill seconds, plus its share of each decode step (step / batch) times its
        output tokens. A prefill-only instance adds the decode part at the cheapest
        same-model decode pool at a reference batch, so the prefill stage compares
        colocated and disaggregated placements on the whole request.
        """
        n_pools = len(pools)
        self.pool_is_edge = np.array([p.perf.device.kind == "edge" for p in pools])
        # Average power while prefilling a 1,024-token prompt and while decoding a batch
        # of 32 sequences at 1,024 tokens of context: idle plus the dynamic part.
        prefill_w, decode_w, ref_step_s, ref_batch = [], [], [], []
        for p in pools:
            t, e = p.perf.prefill(1024, 1024 * 1025 / 2, 1)
            prefill_w.append(p.perf.idle_power_w + e / t)
            b = max(1, min(32, p.config.max_batch))
            t, e = p.perf.decode(b, b * 1024.0, 1)
            decode_w.append(p.perf.idle_power_w + e / t)
            ref_step_s.append(t)
            ref_batch.append(b)
        self.pool_prefill_power_w = np.array(prefill_w)
        self.pool_decode_power_w = np.array(decode_w)
        # Per output token at the reference batch, per pool.
        usd_tok = np.array([self.pool_price_usd_per_s[k] * ref_step_s[k] / ref_batch[k] for k in range(n_pools)])
        j_tok = np.array([decode_w[k] * ref_step_s[k] / ref_batch[k] for k in range(n_pools)])
        partner_usd = np.zeros(n_pools)
        partner_j = np.zeros(n_pools)
        for k, p in enumerate(pools):
            if p.role == Role.PREFILL:
                mates = [q.index for q in pools if q.role == Role.DECODE and self.pool_model[q.index] == self.pool_model[k]]
                if mates:
                    partner_usd[k] = min(usd_tok[m] for m in mates)
                    partner_j[k] = min(j_tok[m] for m in mates)
        pool = self.pool
        self.is_edge = self.pool_is_edge[pool]
        self.capability = self.pool_capability[pool]
        self.price_usd_per_s = self.pool_price_usd_per_s[pool]
        self.prefill_power_w = self.pool_prefill_power_w[pool]
        self.decode_power_w = self.pool_decode_power_w[pool]
        # 1.0 where the instance decodes its own prefills (colocated), 0.0 for prefill-only.
        self.colocated = (self.role == int(Role.BOTH)).astype(np.float64)
        # The batch a request's decode steps are assumed to be shared with, at least: an idle
        # instance's solo batch is transient under load, and the partner figures above use it.
        self.ref_batch = np.array(ref_batch, dtype=np.float64)[pool]
        self.partner_decode_usd_per_token = partner_usd[pool]
        self.partner_decode_j_per_token = partner_j[pool]
        # Model tiers, ascending: the distinct capabilities served.
        self.tiers = sorted({c for c, serves in zip(self.pool_capability.tolist(), serving) if serves})
        self.top_capability = self.tiers[-1]
        self.any_edge = bool(self.pool_is_edge.any())

    def next_tier_above(self, capability: float) -> float | None:
        """The lowest served capability strictly above `capability`, or None at the top."""
        for tier in self.tiers:
            if tier > capability:
                return tier
        return None

    def set_learned_speed(self, i: int, prefill_s_per_token: float, decode_s_per_token: float) -> None:
        """Instance `i` (of a pool whose speed is learned online) measured this fast: its
        queue wait and decode step use its own figures, its pool's prefill prediction the
        mean of the pool's instances that have measured one."""
        self._prefill_a[i] = 0.0
        self._prefill_b[i] = prefill_s_per_token
        self._decode_coef[i] = (decode_s_per_token, 0.0, 0.0)
        k = int(self.pool[i])
        learned = self._learned_prefill.setdefault(k, {})
        learned[i] = prefill_s_per_token
        self.pool_prefill_a_s[k] = self.pool_prefill_c_s[k] = 0.0
        self.pool_prefill_b_s[k] = sum(learned.values()) / len(learned)
        self._pool_prefill_abc[k] = (0.0, float(self.pool_prefill_b_s[k]), 0.0)
        self.update(i, int(self.queued_requests[i]), int(self.queued_tokens[i]), int(self.running[i]),
                    int(self.kv_free[i]), float(self.busy_until_s[i]))

    def update(self, i: int, queued_requests: int, queued_tokens: int, running: int, kv_free: int,
               busy_until_s: float) -> None:
        """Write one instance's state (called by the runtime after every change to it)."""
        ready = busy_until_s + (queued_tokens * self._prefill_b[i] + self._prefill_a[i] if queued_tokens else 0.0)
        queued_w, tokens_w, running_w, kv_free_w, busy_w, load_w, load_score_w, ready_w, base_w, per_token_w = \
            self._views
        queued_w[i] = queued_requests
        tokens_w[i] = queued_tokens
        running_w[i] = running
        kv_free_w[i] = kv_free
        busy_w[i] = busy_until_s
        inv_max_batch = self._inv_max_batch[i]
        load = (queued_requests + running) * inv_max_batch
        load_w[i] = load
        load_score_w[i] = 1.0 / (1.0 + load)
        ready_w[i] = ready
        d, e, f = self._decode_coef[i]
        # A queue for decode slots delays the first decode step; charge it as extra TPOT.
        queue_factor = 1.0 + queued_requests * inv_max_batch
        base = (d + (running + 1.0) * e + (self._kv_capacity[i] - kv_free) * f) * queue_factor
        per_token = f * queue_factor
        base_w[i] = base
        per_token_w[i] = per_token
        if self.lists:
            self._ready[i] = ready
            self._tpot_base[i] = base
            self._tpot_per_token[i] = per_token

    def keep_lists(self) -> None:
        """Keep list copies of `ready_s`, `tpot_base_s` and `tpot_per_token_s` from now on (the
        `*_list` predictors read them)."""
        if not self.lists:
            self._ready = self.ready_s.tolist()
            self._tpot_base = self.tpot_base_s.tolist()
            self._tpot_per_token = self.tpot_per_token_s.tolist()
            self.lists = True

    def predicted_prefill_s(self, cands: np.ndarray, tokens: int) -> np.ndarray:
        """Prefill time of a `tokens`-long prompt alone on each candidate (computed per pool, then spread)."""
        per_pool = self.pool_prefill_c_s * tokens
        per_pool += self.pool_prefill_b_s
        per_pool *= tokens
        per_pool += self.pool_prefill_a_s
        return per_pool[self.pool[cands]]

    def predicted_wait_s(self, cands: np.ndarray, now_s: float) -> np.ndarray:
        """Time before a new prompt on each candidate starts prefill: the current
        iteration's remainder plus the prompts already queued ahead of it."""
        wait = self.ready_s[cands] - now_s
        return np.maximum(wait, 0.0, out=wait)

    def predicted_ttft_s(self, cands: np.ndarray, stage: Stage, now_s: float, tokens: int) -> np.ndarray:
        """predicted_wait_s + predicted_prefill_s, fused: the scorers' hottest path (the same
        floating-point operations in the same order, so the same bits)."""
        ttft = self.ready_s[cands] - now_s
        np.maximum(ttft, 0.0, out=ttft)
        k = self.stage_pool[stage]
        if k < 0:
            ttft += self.predicted_prefill_s(cands, tokens)
            return ttft
        a, b, c = self._pool_prefill_abc[k]
        ttft += (c * tokens + b) * tokens + a
        return ttft

    def predicted_tpot_s(self, cands: np.ndarray, context_tokens: int) -> np.ndarray:
        """Decode step time on each candidate with one more sequence holding `context_tokens` of KV,
        stretched by the queue for decode slots."""
        tpot = self.tpot_per_token_s[cands] * float(context_tokens)
        tpot += self.tpot_base_s[cands]
        return tpot

    # Scalar twins of the predictors above, over a list of candidate ids: the same
    # floating-point operations in the same order (IEEE doubles either way), so the same bits.
    # With `slo`, a list predictor returns the predicted-latency scorer's scores instead,
    # slo / (latency + slo), computed in the same pass: the latency first, then + slo, then the
    # division, as the scorer does on arrays, so the same bits from one list instead of two.
    def predicted_ttft_list(self, cands: list[int], stage: Stage, now_s: float, tokens: int,
                            slo: float | None = None) -> list[float]:
        """`predicted_ttft_s` as a list (r > now exactly when r - now > 0 for finite doubles)."""
        if not self.lists:
            self.keep_lists()
        k = self.stage_pool[stage]
        if k >= 0:
            a, b, c = self._pool_prefill_abc[k]
            prefill = (c * tokens + b) * tokens + a
            ready = map(self._ready.__getitem__, cands)
            if slo is None:
                return [(r - now_s if r > now_s else 0.0) + prefill for r in ready]
            return [slo / ((r - now_s if r > now_s else 0.0) + prefill + slo) for r in ready]
        by_pool = [(c * tokens + b) * tokens + a for a, b, c in self._pool_prefill_abc]
        ready = self._ready
        pool = self._pool_list
        ttft = [(ready[i] - now_s if ready[i] > now_s else 0.0) + by_pool[pool[i]] for i in cands]
        return ttft if slo is None else [slo / (x + slo) for x in ttft]

    def predicted_tpot_list(self, cands: list[int], context_tokens: int, slo: float | None = None) -> list[float]:
        """`predicted_tpot_s` as a list."""
        if not self.lists:
            self.keep_lists()
        base = self._tpot_base
        per_token = self._tpot_per_token
        x = float(context_tokens)
        if slo is None:
            return [per_token[i] * x + base[i] for i in cands]
        return [slo / (per_token[i] * x + base[i] + slo) for i in cands]


def _prefill_coefficients(perf: InstancePerf) -> tuple[float, float, float]:
    """Least-squares fit of single-sequence prefill time to a + b*n + c*n^2 over 128..32k tokens."""
    n = np.array([128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768], dtype=np.float64)
    t = np.array([perf.prefill(int(x), x * (x + 1) / 2, 1)[0] for x in n])
    design = np.stack([np.ones_like(n), n, n * n], axis=1)
    # Weight by 1/t so short prompts (the common case) are predicted in relative terms.
    coef, *_ = np.linalg.lstsq(design / t[:, None], np.ones_like(t), rcond=None)
    return float(max(coef[0], 0.0)), float(max(coef[1], 1e-12)), float(max(coef[2], 0.0))


def _decode_coefficients(perf: InstancePerf) -> tuple[float, float, float]:
    """step_s ~ d + e*batch + f*context from two probes: the weight read and the KV read."""
    base = perf.decode_step_s(1, 1.0)
    per_seq = max((perf.decode_step_s(64, 64.0) - base) / 63.0, 0.0)
    per_ctx = max((perf.decode_step_s(64, 64.0 * 4096) - perf.decode_step_s(64, 64.0)) / (64.0 * 4095), 0.0)
    return base, per_seq, per_ctx


class Cluster:
    """Pools and their instances; the static half of what a runtime needs."""

    def __init__(self, config: ClusterConfig):
        self.config = config
        pools: list[Pool] = []
        first = 0
        for i, pc in enumerate(config.pools):
            perf = build_pool_perf(pc, config.source)
            pools.append(Pool(index=i, config=pc, perf=perf, first_instance=first))
            first += pc.instances
        self.pools = pools
        self.n_instances = first
        self.instance_pool = [p for p in pools for _ in p.instances]
        # A decode pool must be able to take KV from some prefill pool: same model.
        prefill_models = {p.perf.model.name for p in pools if p.role == Role.PREFILL}
        for p in pools:
            if p.role == Role.DECODE and p.perf.model.name not in prefill_models:
                raise ConfigError(f"{config.source}: pool '{p.name}': decode pool serves {p.perf.model.name} "
                                  "but no prefill pool serves that model to hand KV over from")
            if p.role == Role.PREFILL and not any(q.role == Role.DECODE and q.perf.model.name == p.perf.model.name
                                                  for q in pools):
                raise ConfigError(f"{config.source}: pool '{p.name}': prefill pool has no decode pool "
                                  f"serving {p.perf.model.name}")

    def check_predictable(self) -> None:
        """Raise ConfigError when a pool's speed is only learned from real engines: a
        simulation would run on the priors, which say nothing about that hardware."""
        for p in self.pools:
            if isinstance(p.perf, LearnedPerf):
                raise ConfigError(f"{self.config.source}: pool '{p.name}': key 'device': missing; a real-engine "
                                  "pool without a device has no performance model to simulate (its speed is "
                                  "learned live); set device: (and a catalogued model) to simulate it")

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(self.pools)

    def make_engines(self, snap: ClusterSnapshot, prefix_caching: bool, shared_store: bool = True) -> list[BatchEngine]:
        """One engine per instance, as both runtimes model them. With `prefix_caching` (and
        the cluster's prefix_cache enabled) every prefill-capable instance gets a prefix
        cache registered in a fresh index on `snap`, so policies see what each one holds,
        with its pool's kv_tiers below HBM and, with `shared_store`, the cluster's kv_store
        (one per model, the capacity split evenly: a block id names one model's KV)."""
        cfg = self.config.prefix_cache
        index = None
        stores: dict[str, TierLru] = {}
        if prefix_caching and cfg.enabled:
            index = PrefixIndex()
            snap.prefix_index = index
            snap.prefix_block_tokens = cfg.block_tokens
            snap.prefix_tier_indexes = tuple(PrefixIndex() for _ in range(max(len(p.config.kv_tiers)
                                                                              for p in self.pools)))
            if shared_store:
                stores = self.make_stores()
                if len(stores) == 1:
                    snap.prefix_store = next(iter(stores.values()))
        engines = []
        for pool in self.pools:
            for i in pool.instances:
                prefix = None
                if index is not None and pool.role != Role.DECODE:
                    prefix = tiered_cache(cfg.block_tokens, i, index, pool.config.kv_tiers,
                                          pool.perf.kv_bytes_per_token, snap.prefix_tier_indexes,
                                          stores.get(pool.perf.model.name))
                engines.append(BatchEngine(pool.perf, int(pool.role), pool.config.max_batch,
                                           pool.config.max_batch_tokens, prefix, pool.config.engine_token_budget))
        return engines

    def make_stores(self) -> dict[str, TierLru]:
        """The cluster's kv_store as one shared level per model its prefill-capable pools serve
        (a block id names one model's KV), the capacity split evenly; {} without a store."""
        store = self.config.kv_store
        if store is None:
            return {}
        perfs = {p.perf.model.name: p.perf for p in self.pools if p.role != Role.DECODE}
        block_tokens = self.config.prefix_cache.block_tokens
        return {name: TierLru(store, store.capacity_blocks(block_tokens * perf.kv_bytes_per_token) // len(perfs),
                              shared=True)
                for name, perf in perfs.items()}

    def pool_of(self, instance: int) -> Pool:
        return self.instance_pool[instance]
