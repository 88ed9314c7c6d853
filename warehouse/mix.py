"""Export mixes: several sources in one dataset, each by a count or a weight.

R1's SFT set was 600K reasoning samples plus 200K non-reasoning ones; `distill export --mix` builds such a
set. A source is a warehouse run (its rows as the export makes them: variant, --where and difficulty apply)
or a local chat file of non-reasoning data (JSONL, JSON or Parquet rows with a `messages` list), whose
assistant turns get an empty think block, `<think>\\n\\n</think>\\n\\n` before the answer, or none.

Problems are deduplicated across sources by their question (the last user turn, case and spacing
ignored): a problem taken from an earlier source is dropped from later ones, so the first listed source
wins. Within a source, rows are sampled by a hash of the seed and the row's id, so the same arguments take
the same rows. A source with fewer rows than asked for gives all it has, and the card and stderr say so.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.errors import DistillError

CHAT_SUFFIXES = (".jsonl", ".json", ".parquet")
CHAT_THINK = ("empty", "none")  # what a chat row's assistant turn starts with: an empty think block, or nothing
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass
class Source:
    """One `--mix SOURCE=SPEC`: what it names, what was asked of it, and (after `take`) what it gave."""
    name: str  # as given: a run id or a file
    kind: str  # "run" | "chat"
    spec: str  # as given: a count, a weight or `all`
    count: int | None = None  # rows asked for; None = all it has
    weight: float | None = None
    path: Path | None = None  # a chat file
    available: int = 0  # rows it offered (after --where, variant and difficulty)
    duplicates: int = 0  # of those, rows of a problem an earlier source gave
    taken: int = 0
    problems: int = 0  # distinct questions among the rows taken
    notes: list[str] = field(default_factory=list)


def parse_spec(name: str, spec: str) -> tuple[int | None, float | None]:
    """`600` is a count, `0.75` a weight (a share of --total), `all` every row the source has."""
    text = spec.strip()
    if text == "all":
        return None, None
    try:
        if "." not in text and "e" not in text.lower():
            count = int(text)
            if count >= 1:
                return count, None
        else:
            weight = float(text)
            if 0 < weight <= 1:
                return None, weight
    except ValueError:
        pass
    raise DistillError(f"--mix {name}={spec}: expected a count of rows (600), a weight in (0, 1] with --total "
                       "(0.75) or all")


def parse_mix(items: list[str], runs: set[str], total: int | None) -> tuple[list[Source], int | None]:
    """The sources of `--mix SOURCE=SPEC ...` or `--mix mix.yaml`, in order, and the --total weights share.

    mix.yaml: `sources: {SOURCE: SPEC, ...}` (in order) and optionally `total: N`; files it names are found
    relative to its folder first, then the working directory."""
    base = None
    pairs: list[tuple[str, str]] = []
    if len(items) == 1 and "=" not in items[0]:
        path = Path(items[0])
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise DistillError(f"--mix {items[0]}: expected SOURCE=SPEC (e.g. my-run=600) or a mix .yaml file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DistillError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("sources"), dict) or not data["sources"] \
                or set(data) - {"sources", "total"}:
            raise DistillError(f"{path}: expected `sources: {{SOURCE: SPEC, ...}}` and optionally `total: N`")
        pairs = [(str(k), str(v)) for k, v in data["sources"].items()]
        base = path.parent
        if total is None and data.get("total") is not None:
            total = data["total"]
            if isinstance(total, bool) or not isinstance(total, int) or total < 1:
                raise DistillError(f"{path}: total must be a whole number >= 1, got {data['total']!r}")
    else:
        for item in items:
            name, sep, spec = item.rpartition("=")
            if not sep or not name:
                raise DistillError(f"--mix {item}: expected SOURCE=SPEC (e.g. my-run=600), or one mix .yaml file")
            pairs.append((name, spec))
    sources = []
    for name, spec in pairs:
        if name in (s.name for s in sources):
            raise DistillError(f"--mix {name}: listed twice")
        count, weight = parse_spec(name, spec)
        src = Source(name, "run", spec, count, weight)
        if name not in runs:
            found = [p for p in ([base / name] if base else []) + [Path(name)] if p.is_file()]
            if not found:
                known = ", ".join(sorted(runs)) or "none"
                raise DistillError(f"--mix {name}: not a run in the warehouse (runs: {known}) nor a chat file")
            if found[0].suffix not in CHAT_SUFFIXES:
                raise DistillError(f"--mix {name}: a chat file must be .jsonl, .json or .parquet rows of `messages`")
            src.kind, src.path = "chat", found[0]
        sources.append(src)
    weighted = [s for s in sources if s.weight is not None]
    if weighted and len(weighted) < len(sources):
        raise DistillError("--mix: give every source a count (or all), or every source a weight with --total")
    if weighted and total is None:
        raise DistillError("--mix with weights needs --total N (the rows the weights are shares of)")
    if total is not None and not weighted:
        raise DistillError("--total goes with weights (--mix SOURCE=0.75); these sources have counts")
    if weighted:
        if sum(s.weight for s in weighted) > 1 + 1e-9:
            raise DistillError(f"--mix: the weights sum to {sum(s.weight for s in weighted):g}, more than 1")
        for s, n in zip(weighted, shares(total, [s.weight for s in weighted])):
            s.count = n
    return sources, total


def shares(total: int, weights: list[float]) -> list[int]:
    """Whole row counts for weights of `total` that add up to round(total × sum of weights): floors, then one
    more row to the largest remainders (the first listed on a tie)."""
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    extra = round(sum(exact)) - sum(counts)
    for i in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[:max(0, extra)]:
        counts[i] += 1
    return counts


def normalise(question: str) -> str:
    """The key problems are deduplicated by across sources: the question, case and spacing ignored."""
    return " ".join(question.casefold().split())


def _id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def chat_rows(path: Path, think: str) -> list[dict]:
    """A chat file's rows in the export's row shape: `messages` as given (role and content), each assistant
    turn without a think block given an empty one (think = empty) or left as it is (none)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        text = path.read_text(encoding="utf-8")
        try:
            records = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
                       else json.loads(text))
        except json.JSONDecodeError as e:
            raise DistillError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list):
        raise DistillError(f"{path}: expected a list of rows with `messages`")
    rows = []
    for n, rec in enumerate(records, 1):
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if (not isinstance(msgs, list) or not msgs
                or any(not isinstance(m, dict) or not isinstance(m.get("content"), str)
                       or m.get("role") not in ("system", "user", "assistant") for m in msgs)
                or msgs[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in msgs)):
            raise DistillError(f"{path} row {n}: expected `messages`: a list of {{role: system|user|assistant, "
                               "content: text}} with a user turn, ending with the assistant's")
        messages = [{"role": m["role"], "content": m["content"] if m["role"] != "assistant" or think == "none"
                     or "<think>" in m["content"] else EMPTY_THINK + m["content"].strip()} for m in msgs]
        question = [m["content"] for m in msgs if m["role"] == "user"][-1]
        rows.append({"messages": messages, "trace_id": _id("chat", json.dumps(messages, sort_keys=True)),
                     "problem_id": _id("chat", normalise(question)), "run_id": None, "source": path.name,
                     "teacher": None, "reference": None, "completion_tokens": None, "parents": []})
    return rows


def question_key(row: dict) -> str:
    return normalise([m["content"] for m in row["messages"] if m["role"] == "user"][-1])


def take(sources: list[Source], candidates: list[list[dict]], seed: int) -> tuple[list[dict], list[str]]:
    """The mix: each source's candidate rows, less problems an earlier source gave, sampled to its count by a
    hash of (seed, trace_id). Fills each Source's counts; returns the rows and a warning per short source."""
    seen: set[str] = set()
    rows, warnings = [], []
    for src, cands in zip(sources, candidates):
        src.available = len(cands)
        fresh = [r for r in cands if question_key(r) not in seen]
        src.duplicates = len(cands) - len(fresh)
        fresh.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['trace_id']}".encode()).hexdigest())
        if src.count is not None and len(fresh) < src.count:
            note = f"asked for {src.count} rows, only {len(fresh)} left after deduplication: took all"
            src.notes.append(note)
            warnings.append(f"--mix {src.name}: {note}")
        picked = fresh if src.count is None else fresh[:src.count]
        src.taken = len(picked)
        src.problems = len({question_key(r) for r in picked})
        seen |= {question_key(r) for r in picked}
        rows += picked
    return rows, warnings


def card_lines(sources: list[Source], total: int | None, seed: int, chat_think: str) -> list[str]:
    """The card's account of the mix: every source, what it was asked for, what it offered and gave."""
    lines = ["## Mix", "",
             f"Sources in order (the first to give a problem keeps it; rows sampled by a hash of seed {seed} and "
             "the row's id)" + (f"; weights are shares of {total} rows" if total is not None else "") + ":", "",
             "| source | kind | asked | rows available | duplicates dropped | rows taken | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for s in sources:
        asked = s.spec if s.weight is None else f"{s.spec} ({s.count} rows)"
        lines.append(f"| `{s.name}` | {s.kind} | {asked} | {s.available} | {s.duplicates} | {s.taken} | "
                     f"{'; '.join(s.notes)} |")
    if any(s.kind == "chat" for s in sources):
        lines += ["", "Chat rows are non-reasoning data: " + (
            "each assistant turn without a think block starts with an empty one (`<think>\\n\\n</think>\\n\\n`)."
            if chat_think == "empty" else "their assistant turns are as the file has them (no think block added).")]
    return lines + [""]
