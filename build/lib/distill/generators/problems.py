"""Problems: from a local file, a Hugging Face dataset id, or a built-in procedural task.

Every problem gets a stable `problem_id` (a hash of its source and question, so reordering or
slicing a file never renames a problem) and a `reference` answer. Bad input fails here, before
any generation starts, with one line that names the file and the row.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from distill.errors import DistillError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")



@dataclass(slots=True, frozen=True)
class Problem:
    problem_id: str
    source: str
    domain: str
    question: str
    reference: str


def problem_id(source: str, question: str) -> str:
    return hashlib.sha256(f"{source}\x1f{question}".encode()).hexdigest()[:16]


def gsm8k_answer(answer: str) -> str:
    """GSM8K's worked solution ends with `#### <number>`; the number is the reference."""
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip().replace(",", "")
    return answer.strip()


# -- built-in tasks ---------------------------------------------------------------------------
def addition(count: int = 40, digits: list[int] | int = (1, 2), seed: int = 0) -> list[tuple[str, str]]:
    """'What is a + b?' with a and b of the given digit counts, cycling through `digits`.

    The embedded 135M model gets single-digit sums right most of the time and two-digit sums
    some of the time when shown the format: enough right and wrong samples for rejection
    sampling to have something to keep and something to drop.
    """
    digits = [digits] if isinstance(digits, int) else list(digits)
    if not digits or any(d < 1 or d > 6 for d in digits):
        raise DistillError(f"builtin:addition: digits must be between 1 and 6, got {digits}")
    rng = random.Random(seed)
    seen, out = set(), []
    # Problems cycle through `digits`, so each digit count must have room for its share.
    for d in dict.fromkeys(digits):
        lo = 0 if d == 1 else 10 ** (d - 1)
        space = (10**d - lo) ** 2
        share = sum(1 for j in range(count) if digits[j % len(digits)] == d)
        if share > space:
            raise DistillError(f"builtin:addition: only {space} distinct {d}-digit problems, asked {share} "
                               f"(count={count}, digits={digits})")
    while len(out) < count:
        d = digits[len(out) % len(digits)]
        lo = 0 if d == 1 else 10 ** (d - 1)
        a, b = rng.randint(lo, 10**d - 1), rng.randint(lo, 10**d - 1)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append((f"What is {a} + {b}?", str(a + b)))
    return out


BUILTIN_TASKS = {"addition": addition}


# -- loading ----------------------------------------------------------------------------------
def _read_local(path: Path, split: str | None) -> list[dict]:
    if not path.exists():
        raise DistillError(f"dataset file not found: {path}")
    try:
        return _read_local_rows(path, split)
    except UnicodeDecodeError as e:
        raise DistillError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (ValueError, OSError) as e:  # a corrupt Parquet or JSON file: one line, not a traceback
        if isinstance(e, DistillError):
            raise
        raise DistillError(f"{path}: cannot be read: {str(e).splitlines()[0]}") from None


def _read_local_rows(path: Path, split: str | None) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8", errors="strict") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DistillError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and split and split in data:
            data = data[split]
        if not isinstance(data, list):
            raise DistillError(f"{path}: expected a JSON list of rows")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise DistillError(f"{path}: unsupported file type {suffix!r} (use one of {', '.join(LOCAL_SUFFIXES)})")


def _read_hub(dataset_id: str, split: str, config: str | None) -> list[dict]:
    import datasets

    try:
        # A local folder is read afresh: datasets' cache can serve another folder's rows under the same name.
        fresh = ({"download_mode": "force_redownload", "verification_mode": "no_checks"}
                 if Path(dataset_id).is_dir() else {})
        ds = datasets.load_dataset(dataset_id, config, split=split, **fresh)
    except Exception as e:  # datasets raises many types; the user needs the id and the cause
        raise DistillError(f"could not load dataset {dataset_id!r} (split {split!r}): {str(e).splitlines()[0]}") from None
    return ds.to_list()


def _structured_answer(answer, where: str, field: str, answer_format: str) -> str:
    """An object or list (code tests, countdown numbers) is stored as JSON, which the verifiers read.

    `str()` would give Python's repr, which is no JSON: a verifier could not read it back.
    """
    if answer_format == "gsm8k":
        raise DistillError(f"{where}: answer_format gsm8k needs text with '####', but field {field!r} holds "
                           f"structured data ({type(answer).__name__}); use answer_format auto or raw")
    try:
        return json.dumps(answer, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise DistillError(f"{where}: the answer in field {field!r} can't be stored as JSON ({e})") from None


def load_problems(
    dataset: str,
    *,
    split: str = "train",
    config: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    answer_format: str = "auto",
    domain: str = "math",
    options: dict | None = None,
    limit: int | None = None,
    base_dir: Path | None = None,
) -> list[Problem]:
    """Load problems and check every row has a question and an answer.

    `dataset` is `builtin:<task>`, a local file (.jsonl/.json/.parquet/.csv, relative to
    `base_dir`), or a Hugging Face dataset id. `answer_format`: `gsm8k` takes the text after the
    last `####`, `raw` takes the field as is, `auto` does the former when the marker is there. An
    answer that is an object or a list (a code or countdown reference) is kept as JSON.
    """
    options = dict(options or {})
    if answer_format not in ("auto", "gsm8k", "raw"):
        raise DistillError(f"answer_format must be auto, gsm8k or raw, got {answer_format!r}")
    if dataset.startswith("builtin:"):
        name = dataset.split(":", 1)[1]
        if name not in BUILTIN_TASKS:
            raise DistillError(f"unknown built-in task {name!r} (known: {', '.join(sorted(BUILTIN_TASKS))})")
        try:
            pairs = BUILTIN_TASKS[name](**options)
        except TypeError as e:
            raise DistillError(f"builtin:{name}: bad dataset_options: {e}") from None
        rows, source = [{question_field: q, answer_field: a} for q, a in pairs], dataset
    else:
        path = Path(dataset)
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if path.is_dir():  # a dataset folder (data files, or a Hub repo cloned locally): datasets reads it
            rows, source = _read_hub(str(path), split, config), path.name
        elif path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
            rows, source = _read_local(path, split), path.stem
        else:
            rows, source = _read_hub(dataset, split, config), dataset
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DistillError(f"dataset {dataset!r} has no rows")

    problems, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{dataset} row {i}"
        if not isinstance(row, dict):
            raise DistillError(f"{where}: expected an object with fields, got {type(row).__name__}")
        for fld in (question_field, answer_field):
            if fld not in row:
                raise DistillError(f"{where}: no field {fld!r} (fields: {', '.join(map(str, row))})")
        question, answer = row[question_field], row[answer_field]
        if question is None or not str(question).strip():
            raise DistillError(f"{where}: empty question in field {question_field!r}")
        if answer is None or not str(answer).strip() or isinstance(answer, (dict, list, tuple)) and not answer:
            raise DistillError(f"{where}: no answer in field {answer_field!r}")
        if isinstance(answer, (dict, list, tuple)):
            answer = _structured_answer(answer, where, answer_field, answer_format)
        else:
            answer = str(answer)
            if answer_format == "gsm8k" or (answer_format == "auto" and "####" in answer):
                answer = gsm8k_answer(answer)
        pid = problem_id(source, str(question))
        if pid in seen:  # the same question twice is one problem; sampling it twice is `n`'s job
            continue
        seen.add(pid)
        problems.append(Problem(pid, source, domain, str(question), answer))
    return problems
