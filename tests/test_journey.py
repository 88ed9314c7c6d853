"""Journey rows: the builder on literal inputs, storage as kind = journey with parents, and export."""
import fcntl
import re
import shutil
import subprocess
import threading

import pyarrow.parquet as pq
import pytest

from distill.flows.journey import build_journeys, recipe_of_run
from distill.errors import DistillError
from distill.flows.recipe import load_recipe
from distill.generators.base import build_messages
from tests.conftest import DISTILL, ROOT, run_cli
from tests.test_crash import kill_when
from distill.warehouse.export import export
from distill.warehouse.journey import cut_wrong_path, eligible_wrong, teacher_messages, template_journeys
from distill.warehouse.store import Warehouse


def row(i, ok, reasoning, answer, extracted, problem="p0", finish="stop", kept=None):
    return {"trace_id": f"{problem}-{i}", "run_id": "r", "problem_id": problem, "sample_index": i, "kind": "sample",
            "source": "test", "domain": "math", "prompt": [{"role": "user", "content": "What is 23 + 45?"}],
            "reference": "68", "teacher": "m", "reasoning": reasoning, "answer": answer, "finish_reason": finish,
            "correct": ok, "kept": ok if kept is None else kept, "verifier": "math",
            "verdict_reason": "match" if ok else "mismatch", "extracted_answer": extracted}


def test_cut_keeps_the_path_up_to_the_step_that_states_the_wrong_answer():
    text = "First add the tens: 20 + 40 = 60. Then the ones: 3 + 5 = 9. So 23 + 45 is 69. I am sure it is 69."
    assert cut_wrong_path(text, "69") == "First add the tens: 20 + 40 = 60. Then the ones: 3 + 5 = 9. So 23 + 45 is 69."
    # a number inside another does not count (690, 6.9); no answer or not found: the whole path
    assert cut_wrong_path("It is 690.\nOr 6.9. Maybe 69.", "69") == "It is 690. Or 6.9. Maybe 69."
    assert cut_wrong_path("Hmm. Not sure.", None) == "Hmm. Not sure."
    assert cut_wrong_path("Hmm. Not sure.", "12") == "Hmm. Not sure."


def test_eligible_wrong_skips_truncated_and_empty_and_puts_new_mistakes_first():
    rows = [row(0, False, "23 plus 45 is 58.", "\\boxed{58}", "58"),
            row(1, False, "23 plus 45 is 58 again.", "\\boxed{58}", "58"),
            row(2, False, "", "\\boxed{60}", "60"),                       # no reasoning
            row(3, False, "23 plus 45 is", "", None, finish="length"),  # truncated
            row(4, False, "23 plus 45 is 78.", "\\boxed{78}", "78"),
            row(5, True, "23 plus 45 is 68.", "\\boxed{68}", "68")]
    assert [r["sample_index"] for r in eligible_wrong(rows)] == [0, 4, 1]


def test_template_journeys_go_wrong_reflect_then_right_with_parents_and_caps():
    rows = [row(0, False, "23 plus 45 is 58. Done.", "\\boxed{58}", "58"),
            row(1, True, "23 plus 45 is 68.", "\\boxed{68}", "68"),
            row(2, False, "23 plus 45 is 78.", "\\boxed{78}", "78"),
            row(3, True, "Tens 60, ones 8: 68.", "\\boxed{68}", "68"),
            row(0, True, "1 plus 1 is 2.", "\\boxed{2}", "2", problem="q")]   # no wrong sample: no journey
    out = template_journeys(rows, max_wrong=2, per_problem=None)
    assert len(out) == 2 and all(t.kind == "journey" and t.kept and t.problem_id == "p0" for t in out)
    by_parent = {t.parents[-1]: t for t in out}
    first = by_parent["p0-1"]
    assert first.parents == ["p0-0", "p0-2", "p0-1"]
    assert first.reasoning == ("23 plus 45 is 58.\n\nThat gives 58, but checking it again, 58 is not right. "
                               "Let me start over.\n\n23 plus 45 is 78.\n\nThat gives 78, but checking it again, "
                               "78 is not right. Let me start over.\n\n23 plus 45 is 68.")
    assert first.completion == f"<think>\n{first.reasoning}\n</think>\n\n\\boxed{{68}}"
    assert by_parent["p0-3"].parents[:2] == ["p0-2", "p0-0"]  # rotated: a different first mistake
    # caps: one wrong branch, one journey per problem
    capped = template_journeys(rows, max_wrong=1, per_problem=1)
    assert [t.parents for t in capped] == [["p0-0", "p0-1"]]
    # deterministic ids
    assert [t.trace_id for t in template_journeys(rows, 2)] == [t.trace_id for t in out]


def test_teacher_messages_show_the_attempt_after_worked_corrections():
    shots = [{"question": "What is 3 + 4?", "attempt": "3 plus 4 is 8.", "answer": "Wait, it is 7.</think>\n\\boxed{7}"}]
    msgs = teacher_messages("What is 23 + 45?", "23 plus 45 is 58.", system_prompt="Think.", few_shot=shots)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "3 plus 4 is 8." in msgs[1]["content"] and msgs[2]["content"].startswith("Wait")
    assert msgs[-1]["content"].startswith("What is 23 + 45?") and "23 plus 45 is 58." in msgs[-1]["content"]


@pytest.fixture
def run_dir(tmp_path, make_trace):
    wh = Warehouse(tmp_path / "wh")
    traces = []
    for p in range(3):
        for i, ok in enumerate([False, True, False, True]):
            ans = 10 + p if ok else 20 + p + i
            traces.append(make_trace(f"<think>{p} plus 10 is {ans}.</think>\n\\boxed{{{ans}}}", trace_id=f"t{p}{i}",
                                     run_id="run-j", problem_id=f"p{p}", sample_index=i, reference=str(10 + p),
                                     correct=ok, kept=ok, verdict_reason="match" if ok else "mismatch",
                                     extracted_answer=str(ans), rejected_by=None if ok else "wrong_answer",
                                     prompt=[{"role": "user", "content": f"What is {p} + 10?"}]))
    wh.write_part("run-j", 0, traces)
    wh.write_run({"run_id": "run-j", "status": "finished", "recipe": {"name": "j", "verifier": "math"},
                  "timings": {}})
    wh.refresh()
    return tmp_path / "wh"


def test_stored_journeys_are_rows_of_the_run_with_a_view_and_feed_the_export(run_dir, tmp_path):
    stats = build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template", max_wrong=1, per_problem=2)
    assert (stats["journeys"], stats["kept"], stats["problems_kept"]) == (6, 6, 3)
    wh = Warehouse(run_dir)
    assert wh.query("select mode, problems, journeys, kept from journeys")[1] == [("template", 3, 6, 6)]
    # the sample funnel does not count journey rows; journey parents are samples of the same run
    assert wh.query("select samples from funnel where run_id = 'run-j'")[1] == [(12,)]
    assert wh.query("select count(*) from traces j, unnest(j.parents) as p(id) left join traces s on s.trace_id = p.id "
                    "where j.kind = 'journey' and (s.kind <> 'sample' or s.run_id <> 'run-j')")[1] == [(0,)]
    assert wh.read_run("run-j")["journeys"]["template"]["kept"] == 6
    # rebuilding replaces, never doubles
    build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template", max_wrong=1, per_problem=2)
    assert wh.query("select count(*) from traces where kind = 'journey'")[1] == [(6,)]

    res = export(run_dir, tmp_path / "out", variant="journey")
    rows = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert res.splits == {"train": 6}
    stored = {r[0] for r in wh.query("select trace_id from traces where kind = 'journey'")[1]}
    assert {r["trace_id"] for r in rows} == stored
    text = rows[0]["messages"][1]["content"]
    assert text.index("is not right") < text.index("</think>") and "Let me start over." in text


@pytest.mark.slow
def test_journeys_cli_takes_the_journey_keys_from_another_recipe(run_dir, tmp_path):
    """--recipe: the journeys section of another recipe (caps, prompt), the run's own recipe for the rest."""
    other = tmp_path / "other.yaml"
    other.write_text("journey_per_problem: 1\njourney_max_wrong: 1\nn: 99\n")
    proc = run_cli("journeys", "run-j", "--mode", "template", "--recipe", str(other), "--warehouse", str(run_dir),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Warehouse(run_dir).query("select problems, journeys from journeys")[1] == [(3, 3)]  # one per problem


@pytest.mark.slow
def test_journeys_cli_errors_are_one_line(run_dir):
    proc = run_cli("journeys", "no-such-run", "--warehouse", str(run_dir), timeout=120)
    assert proc.returncode != 0 and "unknown run 'no-such-run'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("journeys", "run-j", "--mode", "dream", "--warehouse", str(run_dir), timeout=120)
    assert proc.returncode != 0 and "template or teacher" in proc.stderr
    with pytest.raises(DistillError, match="no samples"):
        build_journeys(recipe_of_run(run_dir, "run-j"), "run-x", "template")


@pytest.mark.slow
def test_teacher_journeys_on_the_real_model_continue_wrong_paths_and_keep_only_verified_ones(tmp_path):
    wh_dir = tmp_path / "wh"
    proc = run_cli("run", "recipes/default.yaml", "--limit", "8", "--set", "backend=transformers",
                   "--set", "journey=teacher", "--warehouse", str(wh_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    wh = Warehouse(wh_dir)
    (run_id,), = wh.query("select run_id from runs")[1]
    cols, rows = wh.query("select j.trace_id, j.kept, j.correct, j.rejected_by, j.reasoning, j.problem_id, "
                          "s.problem_id, s.correct, s.reasoning, s.extracted_answer, j.sampling "
                          "from traces j join traces s on s.trace_id = j.parents[1] where j.kind = 'journey'")
    assert rows, "the run has wrong samples, so teacher journeys were tried"
    for _, kept, correct, why, reasoning, pj, ps, parent_ok, parent_reasoning, parent_ans, sampling in rows:
        assert pj == ps and parent_ok is False                    # a journey starts from a wrong sample of its problem
        assert reasoning.startswith(cut_wrong_path(parent_reasoning, parent_ans))
        assert kept == (why is None)
        assert (not kept) or correct                              # kept only when the continuation verified
        assert why in (None, "wrong_answer", "truncated", "no_think_close")
        assert '"journey":"teacher"' in sampling
    stats = wh.read_run(run_id)["journeys"]["teacher"]
    assert (stats["journeys"], stats["kept"]) == (len(rows), sum(r[1] for r in rows))
    assert sum(r["asked"] for r in stats["rounds"][:1]) == len(rows)  # every journey was asked in round 1
    assert stats["kept"] >= 1, "the 3-shot teacher corrects some one-digit sums"


# -- rebuilds merge, never replace; crashes lose at most a batch; costs -------------------------------------------

class StandIn:
    """A teacher stand-in for the `run_dir` problems ("What is p + 10?"): answers right, or as told.

    `answer(p, call)` gives the answer to problem p on the teacher's `call`-th prompt of it (None: a
    teacher error, as a server outage gives); `crash_on` makes that generate call raise (a crash)."""

    def __init__(self, answer=lambda p, call: p + 10, crash_on: int | None = None):
        self.answer, self.crash_on, self.prompts, self.generate_calls, self.per_problem = answer, crash_on, [], 0, {}

    def generate(self, prompts, sampling):
        from distill.generators.base import Sample

        self.generate_calls += 1
        if self.generate_calls == self.crash_on:
            raise RuntimeError("killed")
        out = []
        for msgs in prompts:
            self.prompts.append(msgs[-1]["content"])
            p = int(re.match(r"What is (\d+) \+ 10\?", msgs[-1]["content"]).group(1))
            self.per_problem[p] = self.per_problem.get(p, 0) + 1
            a = self.answer(p, self.per_problem[p])
            s = (Sample("", "error", None, None, 0.1, error="connection refused") if a is None else
                 Sample(f"Wait, {p} plus 10 is {a}.</think>\n\\boxed{{{a}}}", "stop", 100, 20, 0.1))
            out.append([s] * sampling.n)
        return out


@pytest.fixture
def teacher(monkeypatch):
    """Install a stand-in as the run's teacher; `teacher(...)` swaps in a new one and returns it."""
    state = {}

    def use(*args, **kw):
        state["t"] = StandIn(*args, **kw)
        return state["t"]

    def teacher_for(backend, settings, timings=None):
        state["loads"] = state.get("loads", 0) + 1
        return state["t"], threading.Lock()

    monkeypatch.setattr("distill.flows.journey.teacher_for", teacher_for)
    use.state = state
    return use


def journey_rows(wh_dir):
    cols, rows = Warehouse(wh_dir).query("select * from traces where kind = 'journey' order by trace_id")
    return {r[0]: dict(zip(cols, r)) for r in rows}


def test_a_teacher_outage_during_a_rebuild_keeps_the_stored_journeys(run_dir, teacher):
    rcp = recipe_of_run(run_dir, "run-j")
    t = teacher(lambda p, call: None if p == 1 else p + 10)  # problem 1's requests fail
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=1)
    assert len(t.prompts) == 6 and (stats["candidates"], stats["built"], stats["reused"]) == (6, 6, 0)
    first = journey_rows(run_dir)
    assert sorted(r["rejected_by"] or "kept" for r in first.values()) == ["kept"] * 4 + ["teacher_error"] * 2

    # a full outage: the kept journeys stay exactly as stored; only the teacher errors are asked again
    t = teacher(lambda p, call: None)
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=1)
    assert len(t.prompts) == 2 and all(q.startswith("What is 1 + 10?") for q in t.prompts)
    again = journey_rows(run_dir)
    assert again.keys() == first.keys() and (stats["reused"], stats["built"], stats["kept"]) == (4, 2, 4)
    for k, r in first.items():
        if r["kept"]:
            assert again[k] == r  # the same row, created_at included: not asked, not rewritten

    # the teacher is back: the two errors become journeys
    t = teacher()
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=1)
    assert len(t.prompts) == 2 and stats["kept"] == 6 and len(journey_rows(run_dir)) == 6

    # built once, never asked again: zero teacher calls, no teacher even loaded
    loads = teacher.state["loads"]
    t = teacher(crash_on=1)
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=1)
    assert (t.generate_calls, stats["asked"], stats["reused"], teacher.state["loads"]) == (0, 0, 6, loads)
    # a lower cap makes fewer candidates; the stored journeys outside it stay
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=1, per_problem=1)
    assert (t.generate_calls, stats["candidates"], stats["journeys"]) == (0, 3, 6) and len(journey_rows(run_dir)) == 6
    assert Warehouse(run_dir).read_run("run-j")["journeys"]["teacher"]["journeys"] == 6


def test_a_build_removes_the_temporary_files_a_killed_write_left(run_dir):
    runs = run_dir / "traces" / "run_id=run-j"
    left = [runs / ".tmp-journey-template.parquet-0123456789ab.partial",  # distill.files' name
            runs / ".tmp-journey-template.parquet.4242.1"]  # an older writer's
    for f in left:
        f.write_bytes(b"half a file")
    build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template", max_wrong=1, per_problem=2)
    assert not [f for f in left if f.exists()]
    assert Warehouse(run_dir).query("select count(*) from traces where kind = 'journey'")[1] == [(6,)]


def test_a_crash_mid_build_loses_at_most_the_batch_in_flight(run_dir, teacher):
    rcp = recipe_of_run(run_dir, "run-j")
    ckpt = run_dir / "traces" / "run_id=run-j" / ".journey-teacher"
    # problem 0 is wrong on its first try: its journeys take two rounds, both within their batch
    wh = Warehouse(run_dir)
    wh.write_run({**wh.read_run("run-j"), "journeys": {"teacher": {"journeys": 0}}})  # an earlier build's counts
    t = teacher(lambda p, call: 99 if p == 0 and call <= 2 else p + 10, crash_on=4)
    with pytest.raises(RuntimeError, match="killed"):
        build_journeys(rcp, "run-j", "teacher", max_wrong=2, batch=2)
    saved = [r for f in sorted(ckpt.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert t.generate_calls == 4 and len(saved) == 4  # batch 1 (two rounds) and batch 2 saved; batch 3 lost
    assert sorted(r["sampling"].count('"branches":2') for r in saved) == [0, 0, 1, 1]
    assert not (run_dir / "traces" / "run_id=run-j" / "journey-teacher.parquet").exists()
    # the record no longer says the teacher journeys are built, so a rerun of `distill run` builds them
    assert "teacher" not in (wh.read_run("run-j").get("journeys") or {})

    t = teacher()
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=2, batch=2)
    assert len(t.prompts) == 2 and (stats["reused"], stats["built"], stats["journeys"]) == (4, 2, 6)
    rows = journey_rows(run_dir)
    for r in saved:
        assert {k: rows[r["trace_id"]][k] for k in ("completion", "created_at")} == \
               {k: r[k] for k in ("completion", "created_at")}
    assert not list(ckpt.glob("*.parquet"))  # compacted into journey-teacher.parquet
    assert len(set(rows)) == 6


def test_journey_rows_carry_their_cost(run_dir, teacher):
    rcp = recipe_of_run(run_dir, "run-j").replace(price_input_per_mtok=2.0, price_output_per_mtok=8.0)
    teacher(lambda p, call: 99 if p == 2 and call <= 2 else p + 10)  # problem 2 takes two rounds
    stats = build_journeys(rcp, "run-j", "teacher", max_wrong=2)
    one = (100 * 2.0 + 20 * 8.0) / 1e6  # a prompt of 100 tokens and 20 out, per sample asked
    rows = journey_rows(run_dir).values()
    assert sorted((r["problem_id"], round(r["cost_usd"] / one, 9)) for r in rows) == \
           [("p0", 1), ("p0", 1), ("p1", 1), ("p1", 1), ("p2", 2), ("p2", 2)]
    assert stats["cost_usd"] == pytest.approx(8 * one)
    assert Warehouse(run_dir).query("select sum(cost_usd) from traces where kind = 'journey'")[1][0][0] == \
           pytest.approx(8 * one)
    build_journeys(rcp, "run-j", "template", max_wrong=1)
    assert Warehouse(run_dir).query("select min(cost_usd), max(cost_usd) from traces where kind = 'journey' "
                                    "and json_extract_string(sampling, '$.journey') = 'template'")[1] == [(0.0, 0.0)]


def test_a_second_builder_of_the_same_journeys_is_refused_in_one_line(run_dir):
    folder = run_dir / "traces" / "run_id=run-j" / ".journey-template"
    folder.mkdir(parents=True)
    with open(folder / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(DistillError, match="being built by another process"):
            build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template")
    assert build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template")["journeys"] == 6


@pytest.mark.slow
def test_sigkill_during_a_teacher_journey_build_then_rerun_equals_an_uninterrupted_build(tmp_path, make_trace):
    """`distill journeys --mode teacher` on the real model, twice over the same stored samples: once left
    alone, once killed (-9, its whole process group) as soon as its first batch is saved, then rerun."""
    base = tmp_path / "base"
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", {"backend": "transformers", "max_tokens": 32,
                                                            "journey_max_wrong": 1, "warehouse": str(base)})
    traces = []
    for k, (a, b) in enumerate([(23, 45), (38, 17), (56, 29)]):  # one wrong sample each: three journeys
        q, wrong = f"What is {a} + {b}?", a + b + 10
        traces.append(make_trace(f"<think>{a} plus {b} is {wrong}.</think>\n\\boxed{{{wrong}}}", trace_id=f"s{k}",
                                 run_id="kill-j", problem_id=f"p{k}", reference=str(a + b), question=q,
                                 prompt=build_messages(q, recipe.prompt.system_prompt, recipe.prompt.few_shot), teacher=recipe.teacher.model,
                                 correct=False, kept=False, verdict_reason="mismatch", extracted_answer=str(wrong)))
    wh = Warehouse(base)
    wh.write_part("kill-j", 0, traces)
    wh.write_run({"run_id": "kill-j", "status": "finished", "recipe": recipe.to_dict(), "timings": {}})
    wh.refresh()
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    shutil.copytree(base, clean)
    shutil.copytree(base, crashed)
    args = ["journeys", "kill-j", "--mode", "teacher", "--batch", "1"]

    proc = run_cli(*args, "--warehouse", str(clean))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = journey_rows(clean)
    assert len(expected) == 3

    ckpt = crashed / "traces" / "run_id=kill-j" / ".journey-teacher"
    p = subprocess.Popen([*DISTILL, *args, "--warehouse", str(crashed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(p, lambda: ckpt.exists() and any(ckpt.glob("*.parquet")), timeout=900)
    saved = {r["trace_id"]: r for f in ckpt.glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert 1 <= len(saved) < len(expected)
    assert not (crashed / "traces" / "run_id=kill-j" / "journey-teacher.parquet").exists()

    proc = run_cli(*args, "--warehouse", str(crashed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = journey_rows(crashed)
    ids = [r[0] for r in Warehouse(crashed).query("select trace_id from traces where kind = 'journey'")[1]]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))  # same journeys, each once
    stats = Warehouse(crashed).read_run("kill-j")["journeys"]["teacher"]
    # no finished journey was asked again: the rerun asked the teacher only for the others
    assert (stats["reused"], stats["built"], stats["asked"]) == (len(saved), 3 - len(saved), 3 - len(saved))
    for k, r in saved.items():
        assert (got[k]["completion"], got[k]["created_at"]) == (r["completion"], r["created_at"])
    assert not list(ckpt.glob("*.parquet"))
    # batch by batch the same prompts, the same seed: the same rows as the uninterrupted build
    def same(rows):
        return {k: {c: v for c, v in r.items() if c not in ("created_at", "latency_s")} for k, r in rows.items()}

    assert same(got) == same(expected)
