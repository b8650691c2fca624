"""The decision log: one JSON line per placement a policy makes, byte-for-byte reproducible.

Both runtimes write it with the same calls: the simulator
(`infersched simulate --decision-log FILE`) and the live control plane put
their policy in explain mode (`policy.explain = True`), then hand every
Decision to `DecisionLog.write(decision, now_s)`; multi-pass runs also call
`write_pass` when a staging plugin starts a pass. The same trace and seed
give the same file, so a contract test can compare the two runtimes'
logs byte for byte: keys come in a fixed order, floats with six digits after
the point (non-finite ones as null), instance ids as plain integers.

Lines, in the order decisions are made (README "Decision log" has examples):
- placement, `stage` "prefill" or "decode": t, id, pass, stage, candidates
  (left by the filters), removed (filter -> the instances it removed, in
  filter order), scores (scorer -> weight, raw and weighted per candidate),
  total (what the picker ranked), chosen (null when none was left),
  colocated, reason ('' unless rejected). A colocated request is one prefill
  line with colocated true; a disaggregated one a prefill line then a decode
  line; a rejection ends with chosen null and the reason. With one candidate
  left nothing is scored (scores {}, total []).
- pass (multi-pass policies only), `stage` "pass": t, id, pass, stage, kind
  (first, escalation, advice), input_tokens, output_tokens, min_capability;
  the pass's placement lines follow it with the same pass number.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import IO, Iterable, Sequence

from scheduler.types import Decision, Pass, Placement


def _num(x: float) -> str:
    return "%.6f" % x if math.isfinite(x) else "null"


@functools.lru_cache(maxsize=None)
def _row_format(n: int) -> str:
    return "[" + ",".join(["%.6f"] * n) + "]"


def _nums(xs: Sequence[float]) -> str:
    # One %-format call for the whole row: a quarter of the cost of formatting each float.
    if all(map(math.isfinite, xs)):
        return _row_format(len(xs)) % tuple(xs)
    return "[" + ",".join(map(_num, xs)) + "]"


def _ints(xs: Iterable[int]) -> str:
    return "[" + ",".join(map(str, xs)) + "]"


def _head(now_s: float, request_id: int, pass_index: int, stage: str) -> str:
    return f'{{"t":{_num(now_s)},"id":{int(request_id)},"pass":{int(pass_index)},"stage":"{stage}"'


def placement_line(p: Placement, request_id: int, now_s: float, pass_index: int = 0, colocated: bool = False) -> str:
    """One placement as a JSON line (without the newline)."""
    removed = ",".join(f"{json.dumps(name)}:{_ints(ids)}" for name, ids in p.removed)
    scores = ",".join(f'{json.dumps(s.scorer)}:{{"weight":{_num(s.weight)},"raw":{_nums(s.raw)},'
                      f'"weighted":{_nums(s.weighted)}}}' for s in p.scores)
    chosen = str(p.chosen) if p.chosen >= 0 else "null"
    return (f'{_head(now_s, request_id, pass_index, p.stage.name.lower())},"candidates":{_ints(p.candidates)},'
            f'"removed":{{{removed}}},"scores":{{{scores}}},"total":{_nums(p.total)},"chosen":{chosen},'
            f'"colocated":{"true" if colocated else "false"},"reason":{json.dumps(p.reason)}}}')


def decision_lines(decision: Decision, now_s: float, pass_index: int = 0) -> list[str]:
    """A decision's placement lines, prefill first."""
    if decision.placements is None:
        raise ValueError(f"decision for request {decision.request_id} carries no placements: set "
                         "policy.explain = True before deciding, so decisions can be logged")
    # A colocated decision has one placement (prefill), so the flag is the decision's.
    return [placement_line(p, decision.request_id, now_s, pass_index, decision.colocated)
            for p in decision.placements]


def pass_line(p: Pass, now_s: float, pass_index: int) -> str:
    """A staging plugin's pass as a JSON line: what it places next and why."""
    req = p.request
    return (f'{_head(now_s, req.request_id, pass_index, "pass")},"kind":"{p.kind.name.lower()}",'
            f'"input_tokens":{int(req.input_tokens)},"output_tokens":{int(req.output_tokens)},'
            f'"min_capability":{_num(req.min_capability)}}}')


class DecisionLog:
    """Writes decision lines to a text stream (or a file it opens and closes itself)."""

    def __init__(self, out: IO[str]):
        self._out = out
        self._owned = False
        self.lines = 0

    @classmethod
    def open(cls, path: str | Path, append: bool = False) -> "DecisionLog":
        log = cls(open(path, "a" if append else "w", encoding="utf-8", newline="\n", buffering=1 << 20))
        log._owned = True
        return log

    def write(self, decision: Decision, now_s: float, pass_index: int = 0) -> None:
        """Every placement of one decision, made at `now_s` for pass `pass_index` of its request."""
        lines = decision_lines(decision, now_s, pass_index)
        self._out.write("\n".join(lines) + "\n")
        self.lines += len(lines)

    def write_pass(self, p: Pass, now_s: float, pass_index: int) -> None:
        """A pass a staging plugin starts at `now_s` (pass 0 is the first)."""
        self._out.write(pass_line(p, now_s, pass_index) + "\n")
        self.lines += 1

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if self._owned:
            self._out.close()
        else:
            self._out.flush()

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
