"""The LLM judge at work: verdicts on a shard's samples (`verifier: judge` or `NAME+judge`) and difficulty
ratings of a run's problems (`distill rate`), asked through the openai backend and cached in the warehouse.

Never pay twice: every question to a judge has a key (a hash of what decides its answer: the final answer,
the reference, the judge model and the prompt version; for a rating the problem, its question, the rater and
the prompt version). Stored answers are looked up first, in any run's cache; the rest are asked, and each
batch of answers is written as soon as it is in (before an error is raised for the batch's failures), so a
crash or a dead judge loses at most what was in flight. A judge that failed leaves the shard's samples in
their checkpoints: the rerun judges them without regenerating, and asks only what was not answered.
"""
from __future__ import annotations

from datetime import datetime, timezone

from distill.errors import BackendError, DistillError
from distill.flows.recipe import Recipe
from distill.generators.base import SamplingConfig
from distill.generators.openai import OpenAIGenerator
from distill.verifiers.judge import (JUDGE_PROMPT, JUDGE_PROMPT_VERSION, RATE_PROMPT_VERSION, cache_key,
                                     candidate, judge_messages, parse_rating, parse_verdict, rate_messages,
                                     split_verifier)
from distill.warehouse.schema import Trace
from distill.warehouse.store import Warehouse

BATCH = 64  # questions per call: the answers of each are stored before the next is asked
# Greedy, and a few tokens: the reply is one word (or one number). A reasoning model as judge would need more.
JUDGE_SAMPLING = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=8, seed=0)


def judge_info(recipe: Recipe) -> dict | None:
    """What the run record says of its judge (None: no judge): model, prompt version and text, verdict used."""
    if not split_verifier(recipe.selection.verifier)[1]:
        return None
    return {"model": recipe.selection.judge_model, "prompt_version": JUDGE_PROMPT_VERSION, "prompt": JUDGE_PROMPT,
            "uses": recipe.selection.uses()}


def _ask(judge: OpenAIGenerator, questions: list[tuple[str, list[dict]]], make_row, store) -> dict[str, dict]:
    """Ask each (key, messages) once, BATCH at a time; `make_row(key, reply)` is the stored row, `store(rows)`
    writes a batch's rows. Failed requests are not stored; after the last batch they raise one BackendError."""
    answered, failed = {}, []
    for b in range(0, len(questions), BATCH):
        batch = questions[b:b + BATCH]
        rows = []

        def on_sample(j: int, _k: int, s, batch=batch, rows=rows) -> None:
            if s.finish_reason == "error":
                failed.append(s.error)
            else:
                rows.append(make_row(batch[j][0], s.text))

        try:
            judge.generate([m for _, m in batch], SamplingConfig(**JUDGE_SAMPLING), on_sample=on_sample)
        finally:  # a fatal error (401, 404, the breaker) keeps what was answered before it
            store(rows)
            answered.update((r["key"], r) for r in rows)
    if failed:
        raise BackendError(f"judge {judge.model} at {judge.server}: {len(failed)} of {len(questions)} questions "
                           f"failed (first: {failed[0]}); the answers received are stored, and a rerun asks only "
                           "the rest")
    return answered


def judge_traces(traces: list[Trace], recipe: Recipe, wh: Warehouse) -> dict:
    """Set judge_correct, judge_model and judge_reason on traces the rules have verified (a no-op when the
    recipe's verifier names no judge). Returns {"judge_calls": questions asked, "judge_cached": answered
    from the cache}: a rerun counts none asked."""
    stats = {"judge_calls": 0, "judge_cached": 0}
    if not split_verifier(recipe.selection.verifier)[1] or not traces:
        return stats
    model = recipe.selection.judge_model
    pending: list[tuple[Trace, str]] = []
    questions: dict[str, list[dict]] = {}
    for t in traces:
        t.judge_model, t.judge_correct = model, None
        shown = candidate(t.answer, t.extracted_answer)
        reference = (t.reference or "").strip()
        if not reference or shown is None:  # only a sample with an answer and a reference is asked
            t.judge_reason = "no_reference" if not reference else "no_answer"
            continue
        k = cache_key(shown, reference, model, JUDGE_PROMPT_VERSION)
        questions.setdefault(k, judge_messages(shown, reference))
        pending.append((t, k))
    found = wh.judged(questions)
    todo = [(k, m) for k, m in questions.items() if k not in found]
    stats["judge_cached"], stats["judge_calls"] = len(questions) - len(todo), len(todo)
    if todo:
        judge = OpenAIGenerator.from_settings(recipe.judge_settings())

        def row(k: str, reply: str) -> dict:
            verdict, reason = parse_verdict(reply)
            return {"key": k, "judge_model": model, "prompt_version": JUDGE_PROMPT_VERSION, "verdict": verdict,
                    "reason": reason, "reply": reply, "created_at": datetime.now(timezone.utc)}

        found.update(_ask(judge, todo, row, wh.write_judged))
    for t, k in pending:  # read from the stored reply: a better reading of replies applies to cached ones too
        t.judge_correct, t.judge_reason = parse_verdict(found[k]["reply"])
    return stats


def rate_problems(warehouse: str, run_id: str, rater: str, api_base: str, api_key_env: str = "OPENAI_API_KEY",
                  concurrency: int = 8) -> dict:
    """Ask `rater` how hard each problem of a run is (1-10; it sees the question only) and store the ratings
    in <warehouse>/ratings/ (the `ratings` view). A problem rated before by the same rater and prompt is not
    asked again. Returns counts: problems, asked, cached, unreadable (a reply with no number: rating null)."""
    wh = Warehouse(warehouse)
    wh.refresh_if_writable()
    _, rows = wh.query("SELECT problem_id, any_value(coalesce(question, prompt[len(prompt)].content)) FROM traces "
                       "WHERE run_id = ? AND kind = 'sample' GROUP BY problem_id ORDER BY problem_id", [run_id])
    if not rows:
        raise DistillError(f"no samples of run {run_id!r} in {wh.root} (see `distill runs`)")
    keys = {cache_key(pid, q, rater, RATE_PROMPT_VERSION): (pid, q) for pid, q in rows}
    found = wh.rated(keys)
    todo = [(k, rate_messages(q or "")) for k, (pid, q) in keys.items() if k not in found]
    if todo:
        judge = OpenAIGenerator(rater, api_base=api_base, api_key_env=api_key_env, concurrency=concurrency)

        def row(k: str, reply: str) -> dict:
            return {"problem_id": keys[k][0], "rater": rater, "rating": parse_rating(reply),
                    "prompt_version": RATE_PROMPT_VERSION, "reply": reply, "key": k,
                    "created_at": datetime.now(timezone.utc)}

        found.update(_ask(judge, todo, row, wh.write_ratings))
    wh.refresh_if_writable()
    return {"run_id": run_id, "rater": rater, "problems": len(keys), "asked": len(todo),
            "cached": len(keys) - len(todo), "unreadable": sum(1 for k in keys if found[k]["rating"] is None),
            "prompt_version": RATE_PROMPT_VERSION}
