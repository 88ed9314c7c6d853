"""Journey traces (O1 Replication Journey, arXiv 2410.18982): a wrong path, noticed, then the right one.

A journey row is a trace with `kind = 'journey'` whose `parents` are the samples it was made from.
Its reasoning is the wrong path, cut at the first step that states the wrong answer (the step where
it went wrong, as far as the verifier can tell; the whole path when that is not found), then a turn
that notices the mistake, then a path to the verified answer. Two modes:

- `template`: the turn is a reflection sentence grounded in what the verifier found, and the right
  path is a verified-correct sample of the same problem.
- `teacher`: the teacher is shown the wrong path and asked to find the mistake and go on; the
  continuation is verified, and a wrong continuation becomes the next wrong branch, up to a cap.

This module holds the text and the rows; `flows/journey.py` runs the teacher and writes them.
"""
from __future__ import annotations

import hashlib
import json
import re

from distill.warehouse.schema import Trace, sampling_json

REFLECTIONS = {
    "mismatch": "That gives {extracted}, but checking it again, {extracted} is not right.",
    "no_answer": "I have not reached a clear final answer this way.",
    "unclosed_think": "This is going in circles without reaching an answer.",
}
DEFAULT_REFLECTION = "Let me check this again; something is off."

# Teacher mode: the user turn that shows a wrong path. {question} and {attempt} are replaced.
TEACHER_PROMPT = ("{question}\n\nHere is a line of reasoning that reached a wrong answer:\n{attempt}\n\n"
                  "Go on from there: say what is wrong, then reason to the right answer. Close the reasoning "
                  "with </think> and give the final answer in \\boxed{{}}.")

_STEP = re.compile(r"(?<=[.!?])\s+|\n+")


def reflection(verdict_reason: str | None, extracted: str | None) -> str:
    text = REFLECTIONS.get(verdict_reason or "", DEFAULT_REFLECTION)
    if "{extracted}" in text and not extracted:
        return DEFAULT_REFLECTION
    return text.format(extracted=extracted)


def steps(reasoning: str) -> list[str]:
    """Sentences and lines of a reasoning text, in order, without empty ones."""
    return [s for s in _STEP.split(reasoning.strip()) if s.strip()]


def cut_wrong_path(reasoning: str, extracted: str | None) -> str:
    """The wrong path up to and including the first step that states the wrong answer.

    That step is where the path went wrong as far as the verifier can tell (the verifier checks the
    answer, not each step); what follows it only repeats or dresses the mistake. With no extracted
    answer, or none found in the steps, the whole path is kept.
    """
    parts = steps(reasoning)
    if extracted:
        pattern = re.compile(r"(?<![\w.])" + re.escape(extracted.strip()) + r"(?![\w]|\.\d)")
        for i, step in enumerate(parts):
            if pattern.search(step):
                return " ".join(parts[:i + 1])
    return " ".join(parts)


def journey_reasoning(wrong: list[dict], correct: dict) -> str:
    """Template mode: each wrong path (cut) with its reflection, then the correct path.

    `wrong` and `correct` are trace rows (dicts with reasoning, verdict_reason, extracted_answer).
    """
    parts = []
    for w in wrong:
        parts.append(cut_wrong_path(w["reasoning"], w.get("extracted_answer")))
        parts.append(reflection(w.get("verdict_reason"), w.get("extracted_answer")) + " Let me start over.")
    parts.append(correct["reasoning"].strip())
    return "\n\n".join(p for p in parts if p)


def teacher_messages(question: str, attempt: str, *, system_prompt: str | None = None,
                     few_shot: list[dict] | None = None, prompt: str = TEACHER_PROMPT) -> list[dict]:
    """Teacher mode: the conversation that shows a wrong path and asks for the rest.

    `few_shot` items are {question, attempt, answer}: worked corrections in the expected shape, the
    answer being the continuation (its reasoning, `</think>`, then the final answer).
    """
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for shot in few_shot or []:
        msgs.append({"role": "user", "content": prompt.format(question=shot["question"], attempt=shot["attempt"])})
        msgs.append({"role": "assistant", "content": shot["answer"]})
    msgs.append({"role": "user", "content": prompt.format(question=question, attempt=attempt)})
    return msgs


def eligible_wrong(rows: list[dict]) -> list[dict]:
    """Wrong samples a journey can start from: verified wrong, not truncated, with some reasoning.

    Distinct wrong answers come first (a journey through a new mistake teaches more than a repeat),
    then by sample index.
    """
    wrong = sorted((t for t in rows if t["correct"] is False and t["finish_reason"] != "length"
                    and (t["reasoning"] or "").strip()), key=lambda t: t["sample_index"])
    seen, first, rest = set(), [], []
    for t in wrong:
        (rest if t.get("extracted_answer") in seen else first).append(t)
        seen.add(t.get("extracted_answer"))
    return first + rest


def journey_id(mode: str, parents: list[str], sampling: dict) -> str:
    """A journey's identity: its mode, the samples it starts from and what it was asked with (`sampling`).

    Known before the journey is built, so a rebuild can tell which journeys are already stored.
    """
    key = sampling_json({"journey": mode, **sampling})
    return hashlib.sha256("\x1f".join(["journey", mode, key, *parents]).encode()).hexdigest()[:24]


def journey_trace(base: dict, *, mode: str, parents: list[str], sample_index: int, reasoning: str, answer: str,
                  sampling: dict, teacher: str, backend: str, finish_reason: str | None, correct: bool | None,
                  verifier: str | None, verdict_reason: str | None, extracted: str | None,
                  rejected_by: str | None = None, completion_tokens: int | None = None,
                  prompt_tokens: int | None = None, latency_s: float | None = None, cost_usd: float | None = None,
                  outcome: dict | None = None) -> Trace:
    """A journey row. `base` is a sample row of the same problem: it gives the problem's fields and
    the prompt the student will see (the problem, not the teacher's correction prompt). `outcome`
    (e.g. how many wrong branches it took) is stored in the sampling column but is not part of the id."""
    completion = f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"
    return Trace(
        trace_id=journey_id(mode, parents, sampling), run_id=base["run_id"], problem_id=base["problem_id"],
        sample_index=sample_index, kind="journey", parents=list(parents), source=base["source"],
        domain=base["domain"], prompt=base["prompt"], question=base.get("question"), reference=base["reference"],
        teacher=teacher, backend=backend, sampling=sampling_json({"journey": mode, **sampling, **(outcome or {})}),
        completion=completion, reasoning=reasoning.strip(), answer=answer.strip(), finish_reason=finish_reason,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=latency_s, cost_usd=cost_usd,
        correct=correct, verifier=verifier, verdict_reason=verdict_reason, extracted_answer=extracted,
        kept=rejected_by is None, rejected_by=rejected_by, rejected_stage=None if rejected_by is None else "journey",
    )


def template_journeys(rows: list[dict], max_wrong: int = 1, per_problem: int | None = None) -> list[Trace]:
    """Template mode over sample rows (dicts of trace columns): for each kept correct trace of a
    problem that also has eligible wrong traces, up to `max_wrong` of them, each with its
    reflection, then the correct path. At most `per_problem` journeys per problem (None: one per
    kept trace)."""
    by_problem: dict[str, list[dict]] = {}
    for t in rows:
        if t.get("kind", "sample") == "sample":
            by_problem.setdefault(t["problem_id"], []).append(t)
    out = []
    for group in by_problem.values():
        wrong = eligible_wrong(group)
        right = sorted((t for t in group if t["kept"]), key=lambda t: t["sample_index"])
        if not wrong:
            continue
        for i, c in enumerate(right[:per_problem]):
            # rotate through the wrong paths so each correct one is paired with different mistakes
            picked = [wrong[(i + k) % len(wrong)] for k in range(min(max_wrong, len(wrong)))]
            out.append(journey_trace(
                c, mode="template", parents=[w["trace_id"] for w in picked] + [c["trace_id"]], sample_index=i,
                reasoning=journey_reasoning(picked, c), answer=c["answer"], sampling={"max_wrong": max_wrong},
                teacher=c["teacher"], backend="template", finish_reason=c["finish_reason"], correct=c["correct"],
                verifier=c["verifier"], verdict_reason=c["verdict_reason"], extracted=c["extracted_answer"],
                cost_usd=0.0))  # no teacher call: its samples' costs are on their own rows
    return sorted(out, key=lambda t: t.trace_id)


def wrong_path_spans(journey: dict) -> list[tuple[int, int]]:
    """Character spans of a journey row's reasoning (as stored: stripped) that are wrong paths.

    Both modes join their parts with blank lines, and a cut wrong path never holds a line break
    (`cut_wrong_path` joins its steps with spaces), so the parts are found again by position:
    - template: wrong path, reflection, wrong path, reflection, …, correct path — one wrong path per
      parent but the last (the correct sample); the reflections are the noticing and stay out of the spans;
    - teacher: the sample's wrong path, then the teacher's wrong branches (`branches` in its sampling
      column counts all of them), then the continuation that notices the mistake and reaches the answer.
    A row whose parts are not where its mode puts them gets no spans (nothing masked) rather than wrong ones.
    """
    sampling = json.loads(journey.get("sampling") or "{}")
    mode = sampling.get("journey")
    if mode == "template":
        wrong = [2 * i for i in range(max(len(journey.get("parents") or []) - 1, 0))]
    elif mode == "teacher":
        wrong = list(range(int(sampling.get("branches", 1))))
    else:
        return []
    text = (journey.get("reasoning") or "").strip()
    spans, start = [], 0
    while True:  # the parts' spans, in order
        end = text.find("\n\n", start)
        spans.append((start, len(text) if end < 0 else end))
        if end < 0:
            break
        start = end + 2
    if not wrong or len(spans) <= wrong[-1]:  # the correct path must follow the last wrong one
        return []
    return [spans[i] for i in wrong]
