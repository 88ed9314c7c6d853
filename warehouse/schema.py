"""The record: one row per teacher sample, rejected ones included.

This file is the single source of truth for columns. Every stage builds or reads `Trace`;
the warehouse writes `SCHEMA` to Parquet. Bump SCHEMA_VERSION when a column changes meaning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

SCHEMA_VERSION = 1

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SCHEMA = pa.schema(
    [
        # identity
        ("trace_id", pa.string()),
        ("run_id", pa.string()),
        ("problem_id", pa.string()),
        ("sample_index", pa.int32()),
        ("kind", pa.string()),  # sample | journey
        ("parents", pa.list_(pa.string())),
        # problem
        ("source", pa.string()),
        ("domain", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("reference", pa.string()),
        # generation
        ("teacher", pa.string()),
        ("backend", pa.string()),
        ("sampling", pa.string()),  # json
        ("completion", pa.string()),
        ("reasoning", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float64()),
        ("cost_usd", pa.float64()),  # when the recipe gives prices (API teachers)
        # verdict
        ("correct", pa.bool_()),  # null = could not be verified
        ("verifier", pa.string()),
        ("verdict_reason", pa.string()),
        ("extracted_answer", pa.string()),
        # filters: scores apart from decisions
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("kept", pa.bool_()),
        ("rejected_by", pa.string()),  # the reason, e.g. wrong_answer
        ("rejected_stage", pa.string()),  # the filter (or `selection`) that gave it
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("schema_version", pa.int16()),
    ]
)


@dataclass(slots=True)
class Trace:
    trace_id: str
    run_id: str
    problem_id: str
    sample_index: int
    source: str
    domain: str
    prompt: list[dict]
    reference: str | None
    teacher: str
    backend: str
    sampling: str
    completion: str
    reasoning: str
    answer: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    cost_usd: float | None = None
    kind: str = "sample"
    parents: list[str] = field(default_factory=list)
    correct: bool | None = None
    verifier: str | None = None
    verdict_reason: str | None = None
    extracted_answer: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    kept: bool | None = None
    rejected_by: str | None = None
    rejected_stage: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    schema_version: int = SCHEMA_VERSION


# The dataclass and the Arrow schema must name the same columns, or a write would drop one silently.
assert sorted(f.name for f in dataclasses.fields(Trace)) == sorted(SCHEMA.names)


def sampling_json(sampling: dict) -> str:
    """Canonical JSON of a sampling config: same config, same string, same trace ids."""
    return json.dumps(sampling, sort_keys=True, separators=(",", ":"))


def make_trace_id(problem_id: str, teacher: str, sampling: str, sample_index: int) -> str:
    """Deterministic: a rerun of the same problem, teacher and sampling writes the same ids."""
    key = "\x1f".join([problem_id, teacher, sampling, str(sample_index)])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def split_think(completion: str) -> tuple[str, str]:
    """(reasoning, answer) of a completion in the `<think>…</think> answer` format.

    A completion that never closes `</think>` is all reasoning and has no answer: the format and
    truncation checks then see it for what it is, instead of an answer being guessed out of it.
    A completion with no `<think>` at all is all answer.
    """
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, 0 if start < 0 else start)
    if end < 0:
        if start < 0:
            return "", completion.strip()
        return completion[start + len(THINK_OPEN):].strip(), ""
    begin = 0 if start < 0 else start + len(THINK_OPEN)
    return completion[begin:end].strip(), completion[end + len(THINK_CLOSE):].strip()


def to_table(traces: list[Trace]) -> pa.Table:
    cols = {name: [] for name in SCHEMA.names}
    for t in traces:
        for name in SCHEMA.names:
            cols[name].append(getattr(t, name))
    cols["scores"] = [list(s.items()) for s in cols["scores"]]
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def from_table(table: pa.Table) -> list[Trace]:
    rows = table.to_pylist()
    for r in rows:
        r["scores"] = dict(r["scores"] or [])
        r["parents"] = r["parents"] or []
    return [Trace(**{k: r[k] for k in SCHEMA.names if k in r}) for r in rows]
