"""Decontamination: drop problems that overlap an evaluation set (word n-grams, n=13 as in GPT-3).

Text is lowercased and reduced to its words (punctuation and LaTeX markup drop out: `$\\frac{1}{2}$`
becomes `frac 1 2`). An eval item shorter than n words (a tenth of MATH-500: "Compute
$\\dbinom{31}{28}$.") is matched whole, or it could never be caught. The problem is the last user
message of the prompt, so few-shot examples in earlier turns never count.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

_WORD = re.compile(r"\w+")
MIN_ITEM_WORDS = 2  # a one-word eval item would match half the problems in any set


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _text(line: str, spec: dict, row: int) -> str:
    try:
        return str(json.loads(line)[spec["field"]])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"decontam filter: {spec['path']}:{row + 1}: not a JSON object with a "
                         f"{spec['field']!r} field") from None


def problem_text(trace: Trace) -> str | None:
    users = [m.get("content") or "" for m in trace.prompt or [] if m.get("role") == "user"]
    return users[-1] if users else None


@register_filter("decontam")
class Decontam(Filter):
    """Score: share of the problem's words covered by n-grams found in an eval set (0 clean, 1 a verbatim copy)."""

    def __init__(self, against: list | None = None, n: int = 13, max_share: float = 0.0):
        if not against:
            raise ConfigError(
                "decontam filter: `against` is required, a list of eval sets such as "
                "[{path: data/math500-test-50.jsonl, field: problem}] (jsonl files, `field` holds the text)")
        if n < 1 or not 0.0 <= max_share < 1.0:
            raise ConfigError(f"decontam filter: need n >= 1 and 0 <= max_share < 1, got n={n}, max_share={max_share}")
        self.sets = [self._spec(a) for a in against]
        # Any overlap is contamination by default (GPT-3, open-r1): 13 words in a row are not chance.
        self.n, self.max_share = n, max_share
        self._grams: dict[tuple[str, ...], tuple[int, int]] | None = None  # gram -> (set, row); built lazily
        self._lengths: list[int] = []  # gram lengths present: n, and those of short items
        self._hits: dict[str, dict] = {}

    @staticmethod
    def _spec(a) -> dict:
        if isinstance(a, str):
            a = {"path": a}
        if not isinstance(a, dict) or "path" not in a:
            raise ConfigError(f"decontam filter: each `against` entry is {{path: ..., field: ...}}, got {a!r}")
        path = Path(a["path"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"decontam filter: eval set not found: {path} (relative paths are from {Path.cwd()})")
        spec = {"path": path, "field": a.get("field", "problem"), "name": a.get("name", path.stem)}
        # Check the first row now: a wrong field name should fail when the recipe is loaded, not after
        # the teacher has generated a shard. The index itself is built on first use.
        with open(path, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), None)
        if first is None:
            raise ConfigError(f"decontam filter: eval set is empty: {path}")
        _text(first, spec, 0)
        return spec

    def _build(self) -> None:
        grams, lengths = {}, {self.n}
        for s, spec in enumerate(self.sets):
            with open(spec["path"], encoding="utf-8") as fh:
                for row, line in enumerate(fh):
                    if not line.strip():
                        continue
                    w = words(_text(line, spec, row))
                    if len(w) < MIN_ITEM_WORDS:
                        continue
                    k = min(self.n, len(w))
                    lengths.add(k)
                    for i in range(len(w) - k + 1):
                        grams.setdefault(tuple(w[i:i + k]), (s, row))
        self._grams, self._lengths = grams, sorted(lengths)

    def overlap(self, text: str) -> tuple[float, dict | None]:
        """The share of a problem text's words covered by eval n-grams, and where the first match is
        ({"eval_set": name, "eval_line": line number}; None when nothing matched)."""
        if self._grams is None:
            self._build()
        w = words(text)
        covered = [False] * len(w)
        match = None
        for k in self._lengths:
            for i in range(len(w) - k + 1):
                hit = self._grams.get(tuple(w[i:i + k]))
                if hit is not None:
                    covered[i:i + k] = [True] * k
                    match = match or hit
        share = sum(covered) / len(w) if w else 0.0
        return share, None if match is None else {"eval_set": self.sets[match[0]]["name"], "eval_line": match[1] + 1}

    def score(self, trace: Trace) -> float | None:
        text = problem_text(trace)
        if text is None:
            return None  # nothing to check
        share, where = self.overlap(text)
        if share > self.max_share and trace.problem_id not in self._hits:
            self._hits[trace.problem_id] = {"problem_id": trace.problem_id, **where, "share": round(share, 4)}
        return share

    def keep(self, score: float | None) -> bool | tuple[bool, str]:
        return score is None or score <= self.max_share or (False, "contaminated")

    report_counts = ("samples", "rejected")

    def report(self, traces: list[Trace]) -> dict:
        """The batch's problems that overlap an eval set (where, and how much), how many of its samples
        ask them, and how many of those this filter was the first to reject (`rejected_by = 'contaminated'`)."""
        hit = [t for t in traces if (t.scores.get(self.name) or 0.0) > self.max_share]
        problems = dict.fromkeys(t.problem_id for t in hit if t.problem_id in self._hits)
        return {"eval_sets": [str(s["path"]) for s in self.sets], "n": self.n,
                "contaminated": [self._hits[p] for p in problems], "samples": len(hit),
                "rejected": sum(1 for t in hit if t.rejected_stage == self.name)}
