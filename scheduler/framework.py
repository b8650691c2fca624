"""The plugin framework: four extension points, strict typed parameters, registries.

A policy places each stage by filters -> weighted scorers -> a picker
(scheduler/policy.py); a staging plugin may serve a request in several passes.
Each extension point is a Protocol below. A plugin is one class with:

- `name`: what cluster YAML calls it;
- `Params`: a frozen dataclass of its parameters (`NoParams` when it has
  none); each field's annotation gives its type (float, int, bool, str, or
  one of them `| None`) and `param(...)` its default, bounds and meaning;
- `__init__(self, params, slo)`: its validated `Params` and the cluster SLO;
- the extension point's method(s).

A policy's parameters are one flat mapping (`policy.params` in YAML): every
key must be declared by one of the policy's plugins, and plugins that declare
the same name share its value (`param_catalogue` checks that they declare it
alike). `resolve_params` builds each plugin's `Params` from that mapping and
fails naming the file, the key and the keys allowed. A `Registry` lists one
extension point's plugins and refuses two with the same name.
"""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from scheduler.cluster import ClusterSnapshot
from scheduler.config import SloConfig
from scheduler.types import Pass, Request, Stage
from scheduler.validation import ConfigError, Fields


class Filter(Protocol):
    """Drops candidates that cannot serve the request."""

    name: ClassVar[str]
    reason: ClassVar[str]  # the reject reason when it leaves no candidate

    def mask(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
             prefill_instance: int) -> np.ndarray | None:
        """A boolean keep-mask over `cands`, or None when every candidate passes.

        A filter may also define `passes_stage(snap, stage) -> bool`: True when the snapshot's
        static columns alone show that it keeps every candidate of `stage` for any request;
        the policy then skips it there (asked once per snapshot)."""


class Scorer(Protocol):
    """Ranks candidates; higher is better. The framework clamps to [0, 1] and applies the weight.

    A scorer whose scores lie in [0, 1] by construction may set the class attribute
    `bounded = True`; the framework then skips the clamp (it would change nothing).

    A scorer may also define `score_list(req, snap, stage, cands, now_s, prefill_instance)`:
    the same scores as a list of floats for `cands` given as a list of ints, computed with
    the same floating-point operations in the same order (so the same bits). When every
    scorer of a policy and its picker (`pick_list`) have one, stages of at most
    `scheduler.policy.SCALAR_MAX_CANDIDATES` candidates are scored on lists: worth it for
    a scorer of several numpy calls (each ~0.5 us whatever its size), not for a gather.
    """

    name: ClassVar[str]

    def score(self, req: Request, snap: ClusterSnapshot, stage: Stage, cands: np.ndarray, now_s: float,
              prefill_instance: int) -> np.ndarray:
        """A fresh float64 array, one score per candidate (the framework modifies it in place)."""


class Picker(Protocol):
    """Chooses one candidate from the weighted total."""

    name: ClassVar[str]

    def pick(self, req: Request, cands: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> int:
        """One instance id from `cands`; must not modify `scores`. An optional twin
        `pick_list(req, cands, scores, rng)` takes and returns the same on lists."""


class Staging(Protocol):
    """Serves a request in more than one pass (scheduler/plugins/staging.py)."""

    name: ClassVar[str]

    def first(self, req: Request, snap: ClusterSnapshot) -> Pass:
        """The request's first pass."""

    def credit(self, orig: Request, tag: int, capability: float, snap: ClusterSnapshot) -> float:
        """The effective capability of the answer the pass `tag` delivered on a model of `capability`."""

    def after(self, orig: Request, tag: int, capability: float, correct: bool, snap: ClusterSnapshot,
              now_s: float) -> Pass | None:
        """The next pass after pass `tag` finished, or None when its answer stands."""


# What a class must define to register at each extension point (besides name and Params).
_MEMBERS = {"filter": ("reason", "mask"), "scorer": ("score",), "picker": ("pick",),
            "staging": ("first", "credit", "after")}


@dataclass(frozen=True, slots=True)
class NoParams:
    """The parameters of a plugin that takes none."""


class WithoutParams:
    """Base class of a plugin that takes no parameters and does not read the SLO."""

    Params = NoParams

    def __init__(self, params: NoParams, slo: SloConfig) -> None:
        pass


def param(default: Any, *, above: float | None = None, at_least: float | None = None, at_most: float | None = None,
          doc: str = "", valid: Any = None) -> Any:
    """A parameter field: its default and bounds (> above, >= at_least, <= at_most) and what it means.
    `valid(value)` returns the reason a value is wrong (e.g. an unknown model name), or None."""
    return field(default=default, metadata={"bounds": (above, at_least, at_most), "doc": doc, "valid": valid})


class ParamSpec(NamedTuple):
    """One declared parameter. Equal specs (doc and owner aside) may be shared by several plugins."""

    kind: type  # float, int, bool or str
    optional: bool  # None allowed
    default: Any
    bounds: tuple[float | None, float | None, float | None]  # above, at_least, at_most
    doc: str = ""
    owner: str = ""
    valid: Any = None  # value -> reason it is wrong, or None

    def same_as(self, other: "ParamSpec") -> bool:
        return self[:4] == other[:4]

    def check(self, v: Fields, key: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.kind is bool:
            return v.flag(key, value)
        if self.kind is str:
            value = v.string(key, value)
            reason = self.valid(value) if self.valid is not None else None
            if reason:
                raise v.fail(key, reason)
            return value
        above, at_least, at_most = self.bounds
        return v.number(key, value, integer=self.kind is int, above=above, at_least=at_least, at_most=at_most)


def param_specs(plugin: type) -> dict[str, ParamSpec]:
    """The parameters a plugin class declares, by name."""
    hints = typing.get_type_hints(plugin.Params)
    specs = {}
    for f in fields(plugin.Params):
        kind, optional = _kind(plugin, f.name, hints[f.name])
        if f.default is MISSING:
            raise TypeError(f"{plugin.__name__}.Params.{f.name}: every parameter needs a default")
        meta = f.metadata
        specs[f.name] = ParamSpec(kind, optional, f.default, meta.get("bounds", (None, None, None)),
                                  meta.get("doc", ""), plugin.name, meta.get("valid"))
    return specs


def _kind(plugin: type, name: str, hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"{plugin.__name__}.Params.{name}: only 'X | None' unions are supported, got {hint}")
        hint = rest[0]
    if hint not in (float, int, bool, str):
        raise TypeError(f"{plugin.__name__}.Params.{name}: type must be float, int, bool or str, got {hint}")
    return hint, optional


def param_catalogue(plugins: Iterable[type]) -> dict[str, ParamSpec]:
    """Every parameter the plugins declare; a name declared twice must be declared alike."""
    catalogue: dict[str, ParamSpec] = {}
    for plugin in plugins:
        for name, spec in param_specs(plugin).items():
            seen = catalogue.setdefault(name, spec)
            if not seen.same_as(spec):
                raise TypeError(f"parameter {name!r} is declared differently by {seen.owner!r} ({seen[:4]}) and "
                                f"{spec.owner!r} ({spec[:4]}); plugins share a parameter only when they agree")
    return catalogue


class ParamLayer(NamedTuple):
    """Parameter values from one place (a preset, a cluster file, the command line), later layers winning."""

    fields: Fields  # names the place in errors
    key: str  # where the mapping sits in that place, e.g. 'policy.params'
    values: Mapping[str, Any]


def resolve_params(policy: str, plugins: Sequence[type], layers: Sequence[ParamLayer]) -> dict[type, Any]:
    """Each plugin class's Params from the layers; a ConfigError for an unknown key or a bad value."""
    catalogue = param_catalogue(plugins)
    given: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.values.items():
            spec = catalogue.get(key)
            if spec is None:
                allowed = ", ".join(sorted(catalogue)) or "none (its plugins take no parameters)"
                raise layer.fields.fail(layer.key, f"unknown parameter {key!r} for {policy}; allowed: {allowed}")
            given[key] = spec.check(layer.fields, f"{layer.key}.{key}", value)
    return {p: p.Params(**{k: given[k] for k in param_specs(p) if k in given}) for p in plugins}


class UnknownNameError(ConfigError):
    """A policy, filter, scorer, picker or staging name the registry does not list."""


class Registry(Mapping[str, Any]):
    """One extension point's plugins (or the policy presets) by name; duplicates are refused."""

    def __init__(self, kind: str, entries: Iterable[Any]):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        for entry in entries:
            name = getattr(entry, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{entry!r} has no name to register as a {kind}")
            if name in self._entries:
                raise ValueError(f"{kind} name {name!r} is registered twice: {self._entries[name]!r} and {entry!r}")
            if kind in _MEMBERS:
                _check_plugin(kind, entry)
            self._entries[name] = entry

    def __getitem__(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}") \
                from None

    def __contains__(self, name: object) -> bool:  # Mapping's would call __getitem__, which raises
        return name in self._entries

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _check_plugin(kind: str, plugin: type) -> None:
    missing = [m for m in _MEMBERS[kind] if not hasattr(plugin, m)]
    if missing:
        raise TypeError(f"{kind} {plugin.name!r} ({plugin.__name__}) lacks {', '.join(missing)}")
    params = getattr(plugin, "Params", None)
    if not (isinstance(params, type) and is_dataclass(params) and params.__dataclass_params__.frozen):
        raise TypeError(f"{kind} {plugin.name!r} ({plugin.__name__}): Params must be a frozen dataclass "
                        "(NoParams when it takes none)")
    param_specs(plugin)  # the annotations are types the framework can check
