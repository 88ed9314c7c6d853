"""distill export --mix: reasoning runs and non-reasoning chat data in one dataset, by counts or weights,
deduplicated by problem across sources, reproducible, and accounted for in the card.

The warehouse is written directly (Warehouse.write_part: real Parquet and DuckDB, no model); the chat data is
tests/data/chat-small.jsonl (7 rows, one of them the same question as a run's problem)."""
from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from distill.errors import DistillError
from distill.warehouse.export import export
from distill.warehouse.store import Warehouse
from tests.conftest import ROOT, run_cli

CHAT = ROOT / "tests" / "data" / "chat-small.jsonl"


@pytest.fixture
def wh_dir(tmp_path, make_trace):
    """Run `a`: "What is p + 2?" for p in 0..5; run `b`: p in 4..9 (4 and 5 asked again, other case and spacing).
    Two kept samples per problem, one wrong."""
    wh = Warehouse(tmp_path / "wh")
    for run_id, problems in (("a", range(0, 6)), ("b", range(4, 10))):
        traces = []
        for p in problems:
            question = f"What is {p} + 2?" if run_id == "a" else f"what is {p}   + 2?"
            for i, ok in enumerate([True, True, False]):
                ans = p + 2 if ok else p + 3
                traces.append(make_trace(f"<think>{p} and 2 make {ans}.</think>\n\\boxed{{{ans}}}",
                                         trace_id=f"{run_id}{p}{i}", run_id=run_id, problem_id=f"{run_id}-p{p}",
                                         sample_index=i, prompt=[{"role": "user", "content": question}],
                                         reference=str(p + 2), correct=ok, kept=ok,
                                         rejected_by=None if ok else "wrong_answer"))
        wh.write_part(run_id, 0, traces)
        wh.write_run({"run_id": run_id, "status": "finished", "teacher": "m", "backend": "b", "timings": {},
                      "recipe": {"n": 3, "dataset": "builtin:addition", "filters": ["rejection"]}})
    wh.refresh()
    return tmp_path / "wh"


def rows_of(out) -> list[dict]:
    return pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()


def trace_ids(out) -> set[str]:
    return {r["trace_id"] for f in (out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()}


def table_row(card: str, source: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| `{source}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_runs_and_chat_file_deduplicated_by_question_first_source_wins(wh_dir, tmp_path):
    res = export(wh_dir, tmp_path / "out", mix=["a=all", "b=all", f"{CHAT}=all"])
    rows = rows_of(tmp_path / "out")
    by_source = {}
    for r in rows:
        by_source.setdefault(r["run_id"] or r["source"], []).append(r)
    # a: 6 problems x 2 kept; b: its problems 4 and 5 are a's, so 4 problems x 2; the chat file: 7 rows less
    # "what is 0  + 2?" (a's first problem)
    assert {k: len(v) for k, v in by_source.items()} == {"a": 12, "b": 8, "chat-small.jsonl": 6}
    assert {r["problem_id"] for r in by_source["b"]} == {f"b-p{p}" for p in range(6, 10)}
    assert table_row(res.card, "a")[1:6] == ["run", "all", "12", "0", "12"]
    assert table_row(res.card, "b")[1:6] == ["run", "all", "12", "4", "8"]
    assert table_row(res.card, str(CHAT))[1:6] == ["chat", "all", "7", "1", "6"]
    assert res.splits == {"train": 26} and res.warnings == []
    assert "| chat-small.jsonl (chat file) | 6 | see the source dataset |" in res.card  # for its license
    ids = [r["trace_id"] for r in rows]
    assert ids == sorted(ids)  # rows ordered as without a mix


def test_chat_turns_get_an_empty_think_block_or_none(wh_dir, tmp_path):
    export(wh_dir, tmp_path / "empty", mix=[f"{CHAT}=all"])
    rows = {r["messages"][-2]["content"]: r["messages"] for r in rows_of(tmp_path / "empty")}
    assert rows["Give me a synonym for happy."][-1]["content"] == "<think>\n\n</think>\n\nJoyful."
    hola, ciao = [m["content"] for m in rows["And in Italian?"] if m["role"] == "assistant"]
    assert (hola, ciao) == ("<think>\n\n</think>\n\nHola.", "<think>\n\n</think>\n\nCiao.")
    assert rows["Name a primary colour."][-1]["content"] == "<think>\nRed, yellow, blue.\n</think>\n\nRed."
    assert rows["What is the capital of France?"][0] == {"role": "system", "content": "You are a helpful assistant."}
    res = export(wh_dir, tmp_path / "none", mix=[f"{CHAT}=all"], chat_think="none")
    rows = {r["messages"][-2]["content"]: r["messages"] for r in rows_of(tmp_path / "none")}
    assert rows["Give me a synonym for happy."][-1]["content"] == "Joyful."
    assert "no think block added" in res.card


def test_weights_share_the_total_and_a_short_source_gives_all_it_has(wh_dir, tmp_path):
    res = export(wh_dir, tmp_path / "out", mix=["a=0.5", f"{CHAT}=0.5"], total=20)
    rows = rows_of(tmp_path / "out")
    assert sum(1 for r in rows if r["run_id"] == "a") == 10  # of its 12
    assert sum(1 for r in rows if r["run_id"] is None) == 7 - (1 if any(
        r["problem_id"] == "a-p0" for r in rows) else 0)
    chat = table_row(res.card, str(CHAT))
    assert chat[2] == "0.5 (10 rows)" and "took all" in chat[6]
    assert res.warnings == [f"--mix {CHAT}: asked for 10 rows, only {chat[5]} left after deduplication: took all"]
    assert "weights are shares of 20 rows" in res.card


def test_same_arguments_same_bytes_and_the_seed_picks_the_rows(wh_dir, tmp_path):
    def digest(out):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.*"))}

    args = dict(mix=["b=5", "a=5", f"{CHAT}=3"], test_size=0.3, command="distill export --mix …")
    export(wh_dir, tmp_path / "out", **args)
    first = digest(tmp_path / "out")
    export(wh_dir, tmp_path / "out", overwrite=True, **args)
    assert digest(tmp_path / "out") == first and len(first) == 3
    picked = trace_ids(tmp_path / "out")
    export(wh_dir, tmp_path / "other", seed=1, **args)
    other = trace_ids(tmp_path / "other")
    assert len(picked) == len(other) == 13 and picked != other


def test_a_mix_file_lists_sources_in_order_with_paths_beside_it(wh_dir, tmp_path):
    (tmp_path / "mixes").mkdir()
    (tmp_path / "mixes" / "chat.jsonl").write_bytes(CHAT.read_bytes())
    (tmp_path / "mixes" / "r1.yaml").write_text("total: 10\nsources:\n  chat.jsonl: 0.4\n  a: 0.6\n")
    res = export(wh_dir, tmp_path / "out", mix=[str(tmp_path / "mixes" / "r1.yaml")])
    assert table_row(res.card, "chat.jsonl")[1:6] == ["chat", "0.4 (4 rows)", "7", "0", "4"]
    assert table_row(res.card, "a")[2] == "0.6 (6 rows)" and res.splits == {"train": 10}
    # the chat file came first: a's rows of a question it gave are the ones dropped
    assert int(table_row(res.card, "a")[4]) in (0, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"mix": ["nope=10"]}, "--mix nope: not a run in the warehouse \\(runs: a, b\\) nor a chat file"),
    ({"mix": ["a=10", "b=0.5"], "total": 10}, "give every source a count \\(or all\\), or every source a weight"),
    ({"mix": ["a=0.5"]}, "needs --total"),
    ({"mix": ["a=0.7", "b=0.7"], "total": 10}, "the weights sum to 1.4, more than 1"),
    ({"mix": ["a=-3"]}, "expected a count of rows \\(600\\), a weight in \\(0, 1\\]"),
    ({"mix": ["a=10"], "runs": ["a"]}, "give them as --mix RUN=SPEC instead of --runs"),
    ({"mix": ["a=10", "a=5"]}, "--mix a: listed twice"),
    ({"mix": ["a.yaml"]}, "expected SOURCE=SPEC"),
    ({"mix": ["a=10"], "chat_think": "maybe"}, "--chat-think must be empty or none"),
])
def test_bad_mixes_are_one_line_and_write_nothing(wh_dir, tmp_path, kwargs, message):
    with pytest.raises(DistillError, match=message) as e:
        export(wh_dir, tmp_path / "out", **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_bad_chat_row_names_its_file_and_row(wh_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                   '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DistillError, match="bad.jsonl row 2: expected `messages`"):
        export(wh_dir, tmp_path / "out", mix=[f"{bad}=all"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_mix_warns_on_stderr_when_a_source_is_short(wh_dir, tmp_path):
    r = run_cli("export", "--out", str(tmp_path / "out"), "--mix", "a=100", "--mix", f"{CHAT}=2",
                "--warehouse", str(wh_dir))
    assert r.returncode == 0, r.stderr
    assert "warning: --mix a: asked for 100 rows, only 12 left after deduplication: took all" in r.stderr
    assert "train: 14 rows" in r.stdout
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `a` | run | 100 | 12 | 0 | 12 |" in card and "--mix a=100 --mix" in card
