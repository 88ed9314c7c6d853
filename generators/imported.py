"""Traces someone already has (OpenR1-Math-220k, OpenThoughts, Bespoke-Stratos, NuminaMath, API logs), read as
a teacher's samples: `distill import` stores them as a run, verified and filtered like a generated one.

Four shapes, told apart by their columns (`detect_shape`), each column renamable (`fields`):
- messages: TRL/OpenAI chat, `messages: [{role, content}, …]`; the final assistant turn is the sample, the
  turns before it the prompt;
- sharegpt: `conversations: [{from, value}, …]` (human/gpt), and a `system` column if the data has one;
- openr1: `problem`, `answer` (else `solution`) and `generations`, a list: one sample per element;
- prompt_completion: `prompt` and `completion` columns.
Reasoning comes from `<think>…</think>` in the text, or a `reasoning_content` field (of the final assistant
turn, or a column), or Bespoke-Stratos' `<|begin_of_thought|>` markers; the stored completion is always
`<think>reasoning</think> answer`. The teacher is the row's `model`/`teacher`/`generator` column if it has one.

Rows are streamed (JSONL line by line, Parquet batch by batch, a dataset folder or Hub id through
`datasets`), never loaded whole. A sample's identity is make_trace_id(prompt, teacher, IMPORTED, index) with
one fixed sampling for every import: the same file imported twice, into any run, names the same samples.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distill.errors import DistillError
from distill.generators.problems import Problem, gsm8k_answer, problem_id
from distill.warehouse.schema import THINK_CLOSE, THINK_OPEN, Trace, make_trace_id, sampling_json, split_think

SHAPES = ("messages", "sharegpt", "openr1", "prompt_completion")
ROLES = ("question", "answer", "completion", "reasoning", "teacher", "generations", "messages")
IMPORTED = sampling_json({"imported": True})  # no sampling parameters are known: one fixed value for every import
BACKEND = "import"

# The column each shape reads for a role; a tuple is tried in order and may be absent (the role is optional).
DEFAULT_FIELDS: dict[str, dict[str, str | tuple[str, ...]]] = {
    "messages": {"messages": "messages"},
    "sharegpt": {"messages": "conversations"},
    "openr1": {"question": "problem", "generations": "generations"},
    "prompt_completion": {"question": "prompt", "completion": "completion"},
}
OPTIONAL_FIELDS = {"answer": ("answer", "solution"), "teacher": ("model", "teacher", "generator"),
                   "reasoning": ("reasoning_content", "reasoning")}
ROLE_HELP = {"question": "the problem text", "answer": "the reference answer", "completion": "the sample's text",
             "reasoning": "the sample's reasoning", "teacher": "the model that wrote the sample",
             "generations": "the list of samples", "messages": "the conversation"}
SUFFIXES = (".jsonl", ".parquet")
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
STRATOS = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")


# -- reading rows, lazily ---------------------------------------------------------------------------
def source_name(source: str) -> str:
    """What a source is called in `source` and the default teacher: a file's stem, a folder's name, a Hub id."""
    path = Path(source)
    return path.stem if path.is_file() else path.name if path.is_dir() else source


def iter_rows(source: str, split: str = "train", config: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a source, in order, one at a time: `where` names the file and line or row."""
    path = Path(source)
    if path.is_dir():
        yield from _iter_folder(path, split)
    elif path.exists() or path.suffix.lower() in SUFFIXES:
        yield from _iter_file(path)
    else:  # a Hub id: streamed by datasets, never downloaded whole (needs the network: not tested offline)
        import datasets

        try:
            ds = datasets.load_dataset(source, config, split=split, streaming=True)
        except Exception as e:  # datasets raises many types; the user needs the id and the cause
            raise DistillError(f"could not load dataset {source!r} (split {split!r}): {str(e).splitlines()[0]}") from None
        for i, row in enumerate(ds):
            yield f"{source} row {i}", row


def _iter_file(path: Path) -> Iterator[tuple[str, dict]]:
    if not path.exists():
        raise DistillError(f"import source not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DistillError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise DistillError(f"{path}:{i}: expected an object with fields, got {type(row).__name__}")
                    yield f"{path}:{i}", row
            except UnicodeDecodeError as e:
                raise DistillError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            i = 0
            for batch in pf.iter_batches(batch_size=256):  # one batch in memory at a time
                for row in batch.to_pylist():
                    yield f"{path} row {i}", row
                    i += 1
        except (pa.ArrowException, OSError) as e:
            raise DistillError(f"{path}: cannot be read: {str(e).splitlines()[0]}") from None
    else:
        raise DistillError(f"{path}: unsupported file type {suffix!r} (import reads .jsonl, .parquet, a dataset "
                           "folder or a Hub id)")


def _iter_folder(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    """A `datasets.save_to_disk` folder (memory-mapped Arrow), or the .jsonl/.parquet files under it, in
    sorted order (a Hub repo cloned locally: data/train-00000-of-00002.parquet, …)."""
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DistillError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
        for i, row in enumerate(ds):
            yield f"{path} row {i}", row
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DistillError(f"{path}: no .jsonl or .parquet files in this folder, and not a datasets.save_to_disk folder")
    for f in files:
        yield from _iter_file(f)


# -- shapes --------------------------------------------------------------------------------------------
def fields_for(shape: str, fields: dict[str, str] | None) -> dict[str, str | tuple[str, ...]]:
    """The columns a shape reads, the user's mapping over its defaults."""
    unknown = sorted(set(fields or {}) - set(ROLES))
    if unknown:
        raise DistillError(f"import field {unknown[0]!r} is not a role (roles: {', '.join(ROLES)})")
    return {**OPTIONAL_FIELDS, **DEFAULT_FIELDS[shape], **(fields or {})}


def detect_shape(columns: list[str], fields: dict[str, str] | None = None, where: str = "the source") -> str:
    """The one shape whose required columns are all there. OpenR1 rows also carry a `messages` column (one
    generation as a chat); their `generations` list says more, so openr1 wins over messages. A role the user
    maps (--field generations=outputs) counts only shapes that read it: the one such shape is taken even when
    its column is missing, so the error names that column instead of another shape being read."""
    cols = set(columns)
    named = set(fields or {}) - set(OPTIONAL_FIELDS)
    pool = [s for s in SHAPES if named <= set(DEFAULT_FIELDS[s])] or list(SHAPES)
    found = [s for s in pool if all(c in cols for r, c in fields_for(s, fields).items() if r in DEFAULT_FIELDS[s])]
    if "openr1" in found and "messages" in found:
        found.remove("messages")
    if len(found) == 1:
        return found[0]
    if not found and len(pool) == 1:
        return pool[0]
    shown = ", ".join(map(str, columns)) or "none"
    if found:
        raise DistillError(f"{where}: the columns ({shown}) fit shapes {' and '.join(found)}: say which with "
                           f"--shape (or import_shape)")
    raise DistillError(f"{where}: cannot tell the shape from the columns ({shown}): give --shape "
                       f"{'|'.join(SHAPES)} and --field ROLE=COLUMN for the columns it needs")


@dataclass(slots=True)
class Row:
    """One row of a source: a problem, the prompt its samples answered, who wrote them, and their texts."""

    problem: Problem
    prompt: list[dict]
    teacher: str
    completions: list[tuple[str, str | None]]  # (text as <think>…</think> answer, finish_reason or None)


def _get(row: dict, fields: dict, role: str, where: str, required: bool = True):
    """The value of a role's column; a column the user or the shape names and the row lacks is one line."""
    col = fields.get(role)
    if isinstance(col, tuple):  # optional defaults: the first one the row has
        return next((row[c] for c in col if row.get(c) is not None), None)
    if col is None:
        return None
    if col not in row:
        if not required:
            return None
        raise DistillError(f"{where}: no field {col!r} ({ROLE_HELP[role]}; rename with --field {role}=COLUMN; "
                           f"fields: {', '.join(map(str, row))})")
    return row[col]


def normalise(text, reasoning=None) -> str:
    """`<think>reasoning</think> answer`, whichever way the data gave the reasoning."""
    text = "" if text is None else str(text)
    if reasoning and str(reasoning).strip() and THINK_OPEN not in text:
        return f"{THINK_OPEN}\n{str(reasoning).strip()}\n{THINK_CLOSE}\n\n{text.strip()}"
    if STRATOS[0] in text and STRATOS[1] in text:  # Bespoke-Stratos / OpenThoughts markers
        thought = text.split(STRATOS[0], 1)[1].split(STRATOS[1], 1)
        answer = thought[1].replace(STRATOS[2], "").replace(STRATOS[3], "")
        return f"{THINK_OPEN}\n{thought[0].strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"
    if THINK_CLOSE in text and THINK_OPEN not in text.split(THINK_CLOSE, 1)[0]:
        return THINK_OPEN + text  # R1 leaves the opening tag in its chat template
    return text


def _turns(value, shape: str, where: str, col: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise DistillError(f"{where}: field {col!r} is not a list of turns")
    if shape == "sharegpt":
        out = []
        for m in value:
            who = str(m.get("from", m.get("role", ""))).lower()
            if who not in SPEAKERS:
                raise DistillError(f"{where}: turn from {m.get('from')!r} in {col!r} (known: {', '.join(SPEAKERS)})")
            out.append({**m, "role": SPEAKERS[who], "content": m.get("value", m.get("content"))})
        return out
    for m in value:
        if "role" not in m or "content" not in m:
            raise DistillError(f"{where}: a turn in {col!r} lacks 'role' or 'content' (keys: {', '.join(m)})")
    return value


def parse_row(row: dict, shape: str, fields: dict, source: str, domain: str, teacher: str, where: str) -> Row:
    """A source row as a problem, its prompt and its samples; what is missing is one line naming the field."""
    reference = _get(row, fields, "answer", where)
    row_teacher = _get(row, fields, "teacher", where)
    reasoning_col = _get(row, fields, "reasoning", where, required=False)
    if shape in ("messages", "sharegpt"):
        turns = _turns(_get(row, fields, "messages", where), shape, where, str(fields["messages"]))
        if turns[-1]["role"] != "assistant":
            raise DistillError(f"{where}: the last turn of {fields['messages']!r} is {turns[-1]['role']!r}, not the "
                               "assistant's sample")
        prompt = [{"role": m["role"], "content": str(m["content"])} for m in turns[:-1]]
        if shape == "sharegpt" and isinstance(row.get("system"), str) and row["system"].strip() \
                and not any(m["role"] == "system" for m in prompt):
            prompt.insert(0, {"role": "system", "content": row["system"]})
        users = [m["content"] for m in prompt if m["role"] == "user"]
        if not users:
            raise DistillError(f"{where}: no user turn before the final assistant turn in {fields['messages']!r}")
        question = users[-1]
        reasoning = turns[-1].get("reasoning_content") or turns[-1].get("reasoning") or reasoning_col
        completions = [(normalise(turns[-1]["content"], reasoning), None)]
    else:
        question = _get(row, fields, "question", where)
        if shape == "openr1":
            gens = _get(row, fields, "generations", where)
            if isinstance(gens, str):
                gens = [gens]
            if not isinstance(gens, list):
                raise DistillError(f"{where}: field {fields['generations']!r} is not a list of samples")
            finish = row.get("finish_reasons") if isinstance(row.get("finish_reasons"), list) else []
            completions = [(normalise(g), finish[i] if i < len(finish) else None) for i, g in enumerate(gens)]
        else:
            completions = [(normalise(_get(row, fields, "completion", where), reasoning_col), None)]
        prompt = [{"role": "user", "content": str(question)}]
    if question is None or not str(question).strip():
        raise DistillError(f"{where}: empty question")
    if reference is not None and not isinstance(reference, str):
        reference = json.dumps(reference, ensure_ascii=False) if isinstance(reference, (list, dict)) else str(reference)
    if reference is not None and "####" in reference:  # a GSM8K worked solution
        reference = gsm8k_answer(reference)
    problem = Problem(problem_id(source, str(question)), source, domain, str(question), reference)
    return Row(problem, prompt, str(row_teacher) if row_teacher else teacher, completions)


class Importer:
    """A source's rows as samples: detects the shape from the first row unless told, and numbers the samples of
    each (prompt, teacher) in stream order, so rows that repeat a prompt add samples 1, 2, … after 0."""

    def __init__(self, source: str, shape: str = "auto", fields: dict[str, str] | None = None, teacher: str = "",
                 domain: str = "math", split: str = "train", config: str | None = None):
        if shape != "auto" and shape not in SHAPES:
            raise DistillError(f"unknown import shape {shape!r} (known: auto, {', '.join(SHAPES)})")
        self.source, self.shape, self.user_fields, self.domain = source, shape, dict(fields or {}), domain
        self.split, self.config = split, config
        self.name = source_name(source)
        self.teacher = teacher or f"import:{self.name}"

    def rows(self) -> Iterator[tuple[str, Row]]:
        """(where, Row) in stream order; the first row fixes the shape when it is `auto`."""
        fields = None
        for where, raw in iter_rows(self.source, self.split, self.config):
            if fields is None:
                if self.shape == "auto":
                    self.shape = detect_shape(list(raw), self.user_fields, where)
                fields = fields_for(self.shape, self.user_fields)
            yield where, parse_row(raw, self.shape, fields, self.name, self.domain, self.teacher, where)

    def traces(self, run_id: str) -> Iterator[tuple[Row, list[Trace]]]:
        """Every row with its samples as Traces of `run_id` (the verdict and decisions still to make)."""
        counters: dict[bytes, int] = {}  # a digest per (prompt, teacher): memory O(prompts), not O(text)
        for _, row in self.rows():
            key = hashlib.sha256(json.dumps([row.prompt, row.teacher], ensure_ascii=False).encode()).digest()
            first = counters.get(key, 0)
            counters[key] = first + len(row.completions)
            out = []
            for i, (text, finish) in enumerate(row.completions, first):
                reasoning, answer = split_think(text)
                p = row.problem
                out.append(Trace(
                    trace_id=make_trace_id(row.prompt, row.teacher, IMPORTED, i), run_id=run_id,
                    problem_id=p.problem_id, sample_index=i, source=p.source, domain=p.domain, prompt=row.prompt,
                    question=p.question, reference=p.reference, teacher=row.teacher, backend=BACKEND,
                    sampling=IMPORTED, completion=text, reasoning=reasoning, answer=answer, finish_reason=finish))
            yield row, out
