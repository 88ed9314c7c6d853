"""The LLM judge's side of verification: what it is shown, how its reply is read, which verdict counts.

Parsers are wrong both ways (math-verify rejects tens of thousands of OpenThoughts answers a judge had
passed) and judges over-accept, so a run can keep both verdicts: `correct` from the rules, `judge_correct`
from a model asked whether the *final answer* equals the reference. The judge is never shown the chain
of thought: a long, confident reasoning cannot talk it round, and the prompt stays a few tokens long.

The prompts are fixed and versioned: changing a word is a new version, so a cached verdict of one wording
is never taken for another's. The calls (through the openai backend) and the cache (in the warehouse)
are wired in flows/judge.py; this module is pure.
"""
from __future__ import annotations

import hashlib
import json
import re

from distill.errors import ConfigError
from distill.verifiers import Verdict, boxes
from distill.warehouse.schema import split_think

JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_PROMPT = (
    "You are checking a student's final answer against the reference answer of a problem.\n"
    "Reference answer: {reference}\n"
    "Student's final answer: {candidate}\n"
    "Do they state the same result (the same value, set or expression, whatever the notation)? "
    "Reply with one word: YES or NO."
)
RATE_PROMPT_VERSION = "rate-v1"
RATE_PROMPT = (
    "How hard is this problem for a strong student to solve? Rate it from 1 (trivial) to 10 (hardest "
    "olympiad level).\n\nProblem:\n{question}\n\nReply with one whole number from 1 to 10."
)
MAX_CANDIDATE = 300  # characters of a final answer shown to the judge; more is not an answer but reasoning
MAX_REFERENCE = 1000
MAX_QUESTION = 4000
# How the recipe's `verifier` names the judge: `judge` alone, or `<rules>+judge` (math+judge).
JUDGE = "judge"


def split_verifier(name: str) -> tuple[str | None, bool]:
    """(rules verifier, whether the judge is asked) of a recipe's `verifier`: math → (math, False),
    math+judge → (math, True), judge → (None, True)."""
    parts = [p.strip() for p in str(name).split("+")]
    rules = [p for p in parts if p != JUDGE]
    if len(rules) > 1 or len(parts) - len(rules) > 1 or any(not p for p in parts):
        raise ConfigError(f"verifier {name!r}: expected a verifier name, judge, or NAME+judge (e.g. math+judge)")
    return (rules[0] if rules else None), len(rules) < len(parts)


def verify(completion: str, reference: str | None) -> Verdict:
    """`verifier: judge` has no rules: `correct` stays null, and the answer the judge will see is extracted."""
    _, answer = split_think(completion)
    return Verdict(None, "judge_only", candidate(answer))


def candidate(answer: str | None, extracted: str | None = None) -> str | None:
    """What the judge is shown of a sample: its final answer, never its reasoning.

    The last complete `\\boxed{}` after `</think>` (the model's own words), else the rules verifier's
    extracted answer, else the text after `</think>`, cut to its last MAX_CANDIDATE characters (a final
    answer comes last). None when there is no answer to judge (e.g. the reasoning never closed).
    """
    answer = (answer or "").strip()
    found = boxes(answer)
    if found and found[-1][2]:
        text = found[-1][2]
    elif extracted and extracted.strip():
        text = extracted.strip()
    elif answer:
        text = answer
    else:
        return None
    return text if len(text) <= MAX_CANDIDATE else "…" + text[-(MAX_CANDIDATE - 1):]


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def judge_messages(candidate_text: str, reference: str) -> list[dict]:
    return [{"role": "user", "content": JUDGE_PROMPT.format(reference=_cap(str(reference).strip(), MAX_REFERENCE),
                                                            candidate=candidate_text)}]


def rate_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": RATE_PROMPT.format(question=_cap(question.strip(), MAX_QUESTION))}]


def parse_verdict(reply: str | None) -> tuple[bool | None, str]:
    """YES → True, NO → False (the reply's first word, any case and punctuation); anything else None.
    The reason is what is stored in `judge_reason`."""
    words = (reply or "").split()
    first = re.sub(r"[^a-z]", "", words[0].lower()) if words else ""
    if first == "yes":
        return True, "judge_yes"
    if first == "no":
        return False, "judge_no"
    return None, "judge_unclear: " + _cap(" ".join(words), 60) if words else "judge_empty_reply"


def parse_rating(reply: str | None) -> float | None:
    """The first whole number 1-10 in the reply, else None."""
    m = re.search(r"\b(10|[1-9])\b", reply or "")
    return float(m.group(1)) if m else None


def cache_key(*parts: str | None) -> str:
    """The cache's key of one question to a judge: a hash of everything that decides its answer
    (answer, reference, judge model, prompt version; or question, rater, prompt version)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).hexdigest()[:32]

