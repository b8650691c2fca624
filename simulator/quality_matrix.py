"""Answer quality from a per-question correctness matrix of real evaluations.

The default quality model (simulator/quality.py) is a nested threshold: a
model answers every question a weaker one does. Real models disagree: on
MMLU-Pro, Llama-3.1-8B-Instruct answers 6.8% of the questions that
Llama-3.1-70B-Instruct gets wrong. With a matrix (questions x models, 1 =
answered correctly), each request draws a question (a seeded hash of its id)
and is correct exactly when the model that answered it got that question
right in the evaluation:

- a pool answers with the matrix column of its model (`columns` maps a
  catalogue model to a column when the names differ, e.g. a frontier proxy);
  4-bit pools keep a right answer with the recovery in QUANTIZATION_CAPABILITY
  (a seeded coin per request);
- an advised answer (simulator/quality.py's lift between executor and
  advisor) is right when the executor's is, or, with probability `lift`, when
  the advisor's is;
- routers read `difficulty`: the capability of the lowest served tier that
  answers the question (1.0 when none does), so an oracle router picks the
  cheapest tier that is right, and an imperfect one misjudges as before.

The matrix is a CSV: `question_id` then one 0/1 column per model.
`python -m simulator.quality_matrix mmlu-pro OUT.csv[.gz] NAME=FILE.json ...`
writes one from MMLU-Pro's published per-question outputs (docs/ECONOMICS.md
says where they are and under which licence); the data is not bundled.
"""
from __future__ import annotations

import csv
import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scheduler.config import QUANTIZATION_CAPABILITY
from simulator.quality import uniforms

# Salts of the per-request coins, so question draws, int4 losses and advice are independent.
_QUESTION_SALT, _QUANT_SALT, _ADVICE_SALT = 0x51, 0x52, 0x53


class MatrixError(ValueError):
    """A malformed matrix file; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class CorrectnessMatrix:
    models: tuple[str, ...]
    question_ids: tuple[str, ...]
    correct: np.ndarray  # bool, questions x models
    source: str = "<inline>"

    def accuracy(self, model: str) -> float:
        return float(self.correct[:, self.models.index(model)].mean())

    @classmethod
    def read_csv(cls, path: str | Path) -> "CorrectnessMatrix":
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if not header or header[0] != "question_id" or len(header) < 2:
                raise MatrixError(f"{path}:1: expected a header `question_id,MODEL,...`")
            ids, values = [], []
            for line, row in enumerate(rows, start=2):
                if len(row) != len(header):
                    raise MatrixError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                for name, cell in zip(header[1:], row[1:]):
                    if cell not in ("0", "1"):
                        raise MatrixError(f"{path}:{line}: field {name!r}: expected 0 or 1, got {cell!r}")
                ids.append(row[0])
                values.append([c == "1" for c in row[1:]])
        if not ids:
            raise MatrixError(f"{path}: no questions")
        return cls(tuple(header[1:]), tuple(ids), np.array(values, dtype=bool), str(path))

    def write_csv(self, path: str | Path) -> None:
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(("question_id",) + self.models)
            for qid, row in zip(self.question_ids, self.correct):
                out.writerow((qid,) + tuple("1" if v else "0" for v in row))


def from_mmlu_pro_outputs(files: dict[str, str | Path]) -> CorrectnessMatrix:
    """Column name -> an MMLU-Pro `model_outputs_*.json` (a list of {question_id, answer, pred});
    the questions every file answered, in question-id order."""
    answers = {}
    for name, path in files.items():
        try:
            records = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MatrixError(f"{path}: cannot read MMLU-Pro outputs: {exc}") from None
        answers[name] = {str(r["question_id"]): r.get("pred") == r["answer"] for r in records}
    common = sorted(set.intersection(*(set(a) for a in answers.values())), key=lambda q: (len(q), q))
    values = np.array([[answers[m][q] for m in files] for q in common], dtype=bool)
    return CorrectnessMatrix(tuple(files), tuple(common), values, "MMLU-Pro model outputs")


class MatrixQuality:
    """A matrix bound to a cluster's tiers (see the module docstring)."""

    def __init__(self, matrix: CorrectnessMatrix, cluster, columns: dict[str, str] | None = None, seed: int = 0):
        columns = columns or {}
        self.matrix = matrix
        self.seed = seed
        tiers: dict[float, tuple[int, float]] = {}
        for pool in cluster.pools:
            model = pool.config.model
            column = columns.get(model, model)
            if column not in matrix.models:
                raise MatrixError(f"{matrix.source}: no column for pool {pool.name!r} (model {model!r}); columns: "
                                  f"{', '.join(matrix.models)} (map it with columns={{{model!r}: COLUMN}})")
            keep = QUANTIZATION_CAPABILITY.get(pool.config.quantization or "", 1.0)
            capability = float(pool.perf.model.capability)
            if capability in tiers and tiers[capability] != (matrix.models.index(column), keep):
                raise MatrixError(f"pool {pool.name!r}: two models at capability {capability:g}")
            tiers[capability] = (matrix.models.index(column), keep)
        self.capabilities = np.array(sorted(tiers))
        self._columns = np.array([tiers[c][0] for c in self.capabilities])
        self._keep = np.array([tiers[c][1] for c in self.capabilities])

    def questions(self, first_id: int, n: int) -> np.ndarray:
        u = uniforms(self.seed ^ _QUESTION_SALT, first_id, n)
        return (u * len(self.matrix.question_ids)).astype(np.int64)

    def _tier_correct(self, first_id: int, n: int) -> np.ndarray:
        """requests x tiers: whether each served tier answers each request's question."""
        right = self.matrix.correct[self.questions(first_id, n)][:, self._columns]
        lossy = self._keep < 1.0
        if lossy.any():
            kept = uniforms(self.seed ^ _QUANT_SALT, first_id, n)[:, None] < self._keep[None, :]
            right = right & (kept | ~lossy[None, :])
        return right

    def difficulty(self, first_id: int, n: int) -> np.ndarray:
        """The router's signal: the lowest tier capability that answers, 1.0 where none does."""
        right = self._tier_correct(first_id, n)
        lowest = right.argmax(axis=1)
        return np.where(right.any(axis=1), self.capabilities[lowest], 1.0)

    def correct(self, first_id: int, capability: np.ndarray) -> np.ndarray:
        """Whether requests first_id.. (one per entry), answered at `capability`, are right.
        NaN capability (not answered) is never right."""
        n = len(capability)
        right = self._tier_correct(first_id, n)
        out = np.zeros(n, dtype=bool)
        answered = ~np.isnan(capability)
        cap = np.where(answered, capability, 0.0)
        # The tier at or below each capability; an advised answer lies strictly between tiers.
        tier = np.clip(np.searchsorted(self.capabilities, cap + 1e-12, side="right") - 1, 0, None)
        rows = np.arange(n)
        out = right[rows, tier] & answered
        base = self.capabilities[tier]
        top = len(self.capabilities) - 1
        between = answered & (cap > base + 1e-12) & (tier < top)
        if between.any():
            lift = (cap - base) / np.maximum(self.capabilities[top] - base, 1e-12)
            coin = uniforms(self.seed ^ _ADVICE_SALT, first_id, n) < lift
            out |= between & right[:, top] & coin
        return out

    def correct_one(self, request_id: int, capability: float) -> bool:
        return bool(self.correct(request_id, np.array([capability]))[0])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[0] != "mmlu-pro" or not all("=" in a for a in args[2:]):
        print("usage: python -m simulator.quality_matrix mmlu-pro OUT.csv[.gz] COLUMN=model_outputs.json ...",
              file=sys.stderr)
        return 2
    files = dict(a.split("=", 1) for a in args[2:])
    matrix = from_mmlu_pro_outputs(files)
    matrix.write_csv(args[1])
    print(f"{args[1]}: {len(matrix.question_ids):,} questions; "
          + ", ".join(f"{m} {matrix.accuracy(m):.1%}" for m in matrix.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
