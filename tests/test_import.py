"""`distill import`: traces someone already has, in each shape, read lazily and stored as a verified, filtered run.

The fixtures in tests/data/import/ (written by make_fixtures.py there) hold GSM8K questions with right and wrong
answers; the counts below are what they hold. The readers are checked without Prefect; the flow runs in-process
against the session's Prefect server (tests/conftest.py), the CLI as a subprocess twice.
"""
from __future__ import annotations

import json
import random
import shutil
import tracemalloc
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from distill.errors import DistillError
from distill.generators.imported import IMPORTED, Importer, detect_shape, iter_rows, normalise
from distill.warehouse.schema import make_trace_id
from distill.warehouse.store import Warehouse

DATA = ROOT / "tests" / "data" / "import"
# file: (shape, samples, teachers, {rejected_by or 'kept': count})
FIXTURES = {
    "messages.jsonl": ("messages", 5, {"deepseek-ai/DeepSeek-R1"}, {"kept": 3, "wrong_answer": 2}),
    "sharegpt.jsonl": ("sharegpt", 5, {"import:sharegpt"}, {"kept": 3, "wrong_answer": 2}),
    "openr1.parquet": ("openr1", 8, {"import:openr1"}, {"kept": 4, "wrong_answer": 3, "truncated": 1}),
    "prompt_completion.jsonl": ("prompt_completion", 6, {"import:prompt_completion"},
                                {"kept": 4, "wrong_answer": 1, "unverifiable": 1}),
    "reasoning_content.jsonl": ("messages", 4, {"deepseek-reasoner"}, {"kept": 3, "wrong_answer": 1}),
}


def samples(source, **kw):
    return [t for _, ts in Importer(str(source), **kw).traces("r") for t in ts]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- readers and shapes (fast: no Prefect) --------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_each_shape_is_told_from_its_columns(name):
    shape, count, teachers, _ = FIXTURES[name]
    imp = Importer(str(DATA / name))
    traces = [t for _, ts in imp.traces("r") for t in ts]
    assert imp.shape == shape and len(traces) == count
    assert {t.teacher for t in traces} == teachers and {t.backend for t in traces} == {"import"}
    for t in traces:  # every completion is `<think>reasoning</think> answer`, split into the columns
        assert t.completion.startswith("<think>") and t.reasoning and "\\boxed" in t.answer or t.finish_reason == "length"
        assert t.prompt[-1] == {"role": "user", "content": t.question} and t.sampling == IMPORTED


def test_rows_become_problems_prompts_and_numbered_samples():
    # messages: the janet prompt twice → samples 0 and 1 of one problem; its reference from `answer`
    msgs = samples(DATA / "messages.jsonl")
    assert [t.sample_index for t in msgs] == [0, 1, 0, 0, 0] and msgs[0].problem_id == msgs[1].problem_id
    assert msgs[0].reference == "18" and msgs[0].prompt == [{"role": "user", "content": msgs[0].question}]
    # openr1: one sample per generation, finish_reasons kept, `solution` when `answer` is null
    r1 = samples(DATA / "openr1.parquet")
    assert [t.sample_index for t in r1] == [0, 1] * 4 and [t.finish_reason for t in r1][4:6] == ["stop", "length"]
    assert r1[-1].reference.endswith("So the answer is $\\boxed{540}$.") and r1[0].reference == "18"
    # sharegpt: the system column is the prompt's system turn; GSM8K's '#### 18' is the reference 18
    sg = samples(DATA / "sharegpt.jsonl")
    assert [m["role"] for m in sg[0].prompt] == ["system", "user"] and sg[0].reference == "18"
    assert sg[0].reasoning.startswith("She uses 3 + 4") and sg[0].answer == "She makes $\\boxed{18}$ dollars a day."
    # reasoning_content of the assistant turn becomes the reasoning
    rc = samples(DATA / "reasoning_content.jsonl")
    assert rc[0].reasoning.startswith("She uses 3 + 4") and rc[0].answer.startswith("She makes")
    # a sample's id is what produced it, not the run: the same file again names the same samples
    assert msgs[1].trace_id == make_trace_id(msgs[1].prompt, "deepseek-ai/DeepSeek-R1", IMPORTED, 1)
    assert [t.trace_id for t in msgs] == [t.trace_id for _, ts in Importer(str(DATA / "messages.jsonl")).traces("other")
                                          for t in ts]


def test_normalise_puts_reasoning_between_think_tags():
    assert normalise("42", "6 * 7") == "<think>\n6 * 7\n</think>\n\n42"
    assert normalise("6 * 7</think> 42") == "<think>6 * 7</think> 42"  # R1's template opens the tag itself
    assert normalise("<|begin_of_thought|>6*7<|end_of_thought|><|begin_of_solution|>42<|end_of_solution|>") == \
        "<think>\n6*7\n</think>\n\n42"
    assert normalise("just 42") == "just 42"  # no reasoning: all answer, as split_think reads it


def test_ambiguous_columns_are_one_line_asking_for_the_shape(tmp_path):
    with pytest.raises(DistillError, match=r"fit shapes messages and sharegpt: say which with --shape"):
        detect_shape(["messages", "conversations"])
    with pytest.raises(DistillError, match=r"cannot tell the shape from the columns \(text, label\): give --shape"):
        detect_shape(["text", "label"])
    # a mapping can make a shape fit: the user's columns for prompt/completion
    assert detect_shape(["q", "resp"], {"question": "q", "completion": "resp"}) == "prompt_completion"
    # a role only one shape reads picks it, so a wrong column is named rather than another shape read
    assert detect_shape(["problem", "messages"], {"generations": "outputs"}) == "openr1"
    # openr1 rows carry a messages column too: the generations list wins
    assert detect_shape(["problem", "answer", "generations", "messages"]) == "openr1"


def test_a_missing_field_is_one_line_naming_it():
    with pytest.raises(DistillError) as e:
        samples(DATA / "prompt_completion.jsonl", fields={"answer": "gold"})
    assert str(e.value).startswith(f"{DATA / 'prompt_completion.jsonl'}:1: no field 'gold' (the reference answer; "
                                   "rename with --field answer=COLUMN") and "\n" not in str(e.value)
    with pytest.raises(DistillError, match=r"messages.jsonl:1: no field 'problem' \(the problem text"):
        samples(DATA / "messages.jsonl", shape="openr1")
    with pytest.raises(DistillError, match=r"import field 'prompt' is not a role"):
        samples(DATA / "messages.jsonl", fields={"prompt": "x"})


def test_a_folder_is_read_as_its_files_in_order_or_as_a_saved_dataset(tmp_path):
    import datasets

    want = [t.trace_id for t in samples(DATA / "messages.jsonl")]
    lines = (DATA / "messages.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "files" / "data").mkdir(parents=True)
    (tmp_path / "files" / "data" / "train-00001.jsonl").write_text("".join(lines[3:]))
    (tmp_path / "files" / "data" / "train-00000.jsonl").write_text("".join(lines[:3]))
    ds = datasets.Dataset.from_list([json.loads(x) for x in lines])
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved-dict"))
    for folder in ("files", "saved", "saved-dict"):
        assert [t.trace_id for t in samples(tmp_path / folder)] == want, folder
    with pytest.raises(DistillError, match="no split 'test'"):
        samples(tmp_path / "saved-dict", split="test")


def test_a_line_that_is_not_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "{not json"])
    with pytest.raises(DistillError, match=rf"^{path}:2: not valid JSON"):
        samples(path)


def _peak_while_reading(rows) -> tuple[int, list]:
    tracemalloc.start()
    try:
        got = [next(rows) for _ in range(10)]
        return tracemalloc.get_traced_memory()[1], got
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_are_streamed_not_loaded_whole(tmp_path, suffix):
    """The first rows of a 10-20 MB source come back holding a few batches' worth of memory, not the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)  # text that does not compress away: the Parquet file is large too
    rows = [{"prompt": f"question {i}", "completion": f"<think>{rng.randbytes(5_000).hex()}</think> {i}"}
            for i in range(2000)]
    path = tmp_path / f"big{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    del rows
    peak, got = _peak_while_reading(iter_rows(str(path)))
    assert [r["prompt"] for _, r in got] == [f"question {i}" for i in range(10)]
    assert path.stat().st_size > 10_000_000 and peak < 4_000_000, (path.stat().st_size, peak)


def test_an_ambiguous_file_is_one_line_and_exit_2_before_anything_starts(tmp_path, monkeypatch, capsys):
    from distill.flows import cli

    path = write_jsonl(tmp_path / "both.jsonl", [{"messages": [], "conversations": [], "answer": "1"}])
    monkeypatch.setattr("sys.argv", ["distill", "import", str(path), "--warehouse", str(tmp_path / "wh")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"{path}:1: the columns (messages, conversations, answer) fit shapes messages and sharegpt" in err
    assert not (tmp_path / "wh").exists()


def test_a_recipe_brings_its_keys_and_the_flags_go_over_them(tmp_path):
    from distill.flows.cli import prepare_import

    recipe = tmp_path / "r1.yaml"
    recipe.write_text("import_fields: {question: q}\nkeep_per_problem: 1\nshard_size: 2\n")
    rcp, src, base = prepare_import(str(DATA / "prompt_completion.jsonl"), recipe, ["prefer=shortest"], None,
                                    ["question=prompt", "completion=completion"], None, None, None, None, None)
    assert rcp.name == "r1" and base == tmp_path and src.shape == "prompt_completion"
    assert rcp.problems.import_fields == {"question": "prompt", "completion": "completion"}
    assert (rcp.selection.keep_per_problem, rcp.selection.prefer, rcp.execution.shard_size) == (1, "shortest", 2)
    assert rcp.teacher.model == "import:prompt_completion"  # no teacher named: the source's name
    again, _, _ = prepare_import(str(DATA / "prompt_completion.jsonl"), None, [], None, [], "deepseek-reasoner",
                                 None, None, None, None)
    assert again.name == "import-prompt_completion" and again.teacher.model == "deepseek-reasoner"


# -- the flow, in-process ------------------------------------------------------------------------------------
def import_run(source, tmp_path, *flags: str, warehouse: Path | None = None):
    """What `distill import SOURCE FLAGS` does, in this process: (run record, run id, warehouse)."""
    from distill.flows.cli import prepare_import
    from distill.flows.generate import run_id_for
    from distill.flows.importer import run_import

    opts = {"set_": [], "field": [], "shape": None, "teacher": None, "verifier": None, "name": None, "limit": None}
    it = iter(flags)
    for flag in it:
        k = flag.lstrip("-").replace("-", "_")
        if k in ("set", "field"):
            opts[k + ("_" if k == "set" else "")].append(next(it))
        else:
            opts[k] = next(it)
    wh = warehouse or tmp_path / "wh"
    rcp, _, base_dir = prepare_import(str(source), None, warehouse=str(wh), **opts)
    run_id = run_id_for(rcp)
    return run_import(rcp, run_id, base_dir, "test"), run_id, Warehouse(wh)


def outcome(wh: Warehouse, run_id: str) -> dict:
    _, rows = wh.query("SELECT CASE WHEN kept THEN 'kept' ELSE rejected_by END, count(*) FROM traces "
                       "WHERE run_id = ? GROUP BY 1", [run_id])
    return dict(rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_import_alone_stores_each_shape_verified_and_filtered(tmp_path, name):
    shape, count, teachers, expected = FIXTURES[name]
    run, run_id, wh = import_run(DATA / name, tmp_path)
    assert run["status"] == "finished" and run["backend"] == "import" and run["import_shape"] == shape
    assert run_id.startswith(f"import-{Path(name).stem}-")
    assert outcome(wh, run_id) == expected
    _, rows = wh.query("SELECT count(*), count(DISTINCT trace_id), count(correct), list(DISTINCT teacher) FROM traces "
                       "WHERE run_id = ?", [run_id])
    assert rows[0][:3] == (count, count, count - expected.get("unverifiable", 0)) and set(rows[0][3]) == teachers


@pytest.mark.slow
def test_a_bad_line_keeps_the_stored_shards_and_the_rerun_after_the_fix_does_only_the_rest(tmp_path):
    lines = [json.loads(x) for x in (DATA / "prompt_completion.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / "logs.jsonl", [*lines[:3], "{oops", *lines[3:]])
    with pytest.raises(DistillError, match=rf"{path}:4: not valid JSON"):
        import_run(path, tmp_path, "--set", "shard_size=1")
    wh = Warehouse(tmp_path / "wh")
    run_id = wh.run_ids()[0]
    stored = {i: wh.part_path(run_id, i).stat().st_mtime_ns for i in range(3)}
    assert not wh.part_exists(run_id, 3) and wh.read_run(run_id)["status"] == "failed"
    write_jsonl(path, lines)  # fixed
    run, again, _ = import_run(path, tmp_path, "--set", "shard_size=1")
    assert again == run_id and run["status"] == "finished" and run["shards_resumed"] == 3
    assert {i: wh.part_path(run_id, i).stat().st_mtime_ns for i in range(3)} == stored  # not rewritten
    assert outcome(wh, run_id) == FIXTURES["prompt_completion.jsonl"][3]


@pytest.mark.slow
def test_a_source_of_many_shards_is_stored_shard_by_shard_holding_one_at_a_time(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "completion": f"<think>{i} + {i} = {2 * i}</think> \\boxed{{{2 * i}}}",
             "answer": str(2 * i if i % 4 else i)} for i in range(400)]  # every 4th answer wrong
    path = write_jsonl(tmp_path / "sums.jsonl", rows)
    run, run_id, wh = import_run(path, tmp_path, "--set", "shard_size=50", "--set", "parallel_shards=1")
    assert run["shards"] == 8 and all(wh.part_exists(run_id, i) for i in range(8))
    assert run["calls"][-1]["rows_read"] == 400 and run["calls"][-1]["peak_buffered_samples"] <= 50
    assert outcome(wh, run_id) == {"kept": 301, "wrong_answer": 99}  # i = 0 is right: 0 + 0 = 0


# -- the CLI ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_a_missing_field_is_one_line_exit_2_and_writes_nothing(tmp_path):
    r = run_cli("import", str(DATA / "openr1.parquet"), "--field", "generations=outputs", "--warehouse",
                str(tmp_path / "wh"), timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no field 'outputs' (the list of samples; rename with --field generations=COLUMN" in r.stderr
    assert not (tmp_path / "wh").exists()


@pytest.mark.slow
def test_cli_import_then_report_and_export_work_on_the_imported_run(tmp_path):
    src = shutil.copy(DATA / "messages.jsonl", tmp_path / "api-logs.jsonl")
    r = run_cli("import", str(src), "--warehouse", "wh", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wh = Warehouse(tmp_path / "wh")
    (run_id,) = wh.run_ids()
    assert "funnel — " + run_id in r.stdout and "rejected: wrong_answer │     2" in r.stdout
    assert "this call: 5 rows read" in r.stdout
    from distill.warehouse.export import export
    from distill.warehouse.report import write_report

    page = Path(write_report(tmp_path / "wh", run_id, tmp_path / "report.html")).read_text()
    assert run_id in page and "deepseek-ai/DeepSeek-R1" in page
    result = export(tmp_path / "wh", tmp_path / "out")
    assert result.splits == {"train": 3}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "teacher: `deepseek-ai/DeepSeek-R1` on `import`" in card and "sampling: not known" in card
