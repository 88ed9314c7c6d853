"""Journey traces (O1 Replication Journey, arXiv 2410.18982): a wrong path, noticed, then the right one.

Template mode: the reflection sentence is built from what the verifier found about the wrong path,
so it never claims more than was checked. The wrong path is kept whole (the step where it went
wrong is not located yet).
"""
from __future__ import annotations

REFLECTIONS = {
    "mismatch": "That gives {extracted}, but checking it again, {extracted} is not right.",
    "no_answer": "I have not reached a clear final answer this way.",
    "unclosed_think": "This is going in circles without reaching an answer.",
}
DEFAULT_REFLECTION = "Let me check this again; something is off."


def reflection(verdict_reason: str | None, extracted: str | None) -> str:
    text = REFLECTIONS.get(verdict_reason or "", DEFAULT_REFLECTION)
    if "{extracted}" in text and not extracted:
        return DEFAULT_REFLECTION
    return text.format(extracted=extracted)


def journey_reasoning(wrong: list[dict], correct: dict) -> str:
    """Reasoning of wrong paths, each followed by its reflection, then the correct path.

    `wrong` and `correct` are trace rows (dicts with reasoning, verdict_reason, extracted_answer).
    """
    parts = []
    for w in wrong:
        parts.append(w["reasoning"].strip())
        parts.append(reflection(w.get("verdict_reason"), w.get("extracted_answer")) + " Let me start over.")
    parts.append(correct["reasoning"].strip())
    return "\n\n".join(p for p in parts if p)
