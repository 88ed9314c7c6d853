"""Preference pairs (distill export --variant dpo) and journeys' wrong-path spans, on literal rows."""
import hashlib

import pyarrow.parquet as pq
import pytest

from distill.errors import DistillError
from distill.trainers.sft import mask_labels
from distill.warehouse.export import export
from distill.warehouse.journey import wrong_path_spans
from distill.warehouse.store import Warehouse


def sample(make_trace, problem: int, index: int, verdict: bool | None, text: str, *, kept: bool | None = None,
           finish: str = "stop", extracted: str | None = None):
    return make_trace(text, trace_id=f"t{problem}{index}", run_id="run-a", problem_id=f"p{problem}",
                      sample_index=index, prompt=[{"role": "system", "content": "Think, then box."},
                                                  {"role": "user", "content": f"What is {problem} + 2?"}],
                      reference=str(problem + 2), correct=verdict, kept=bool(verdict) if kept is None else kept,
                      finish_reason=finish, verdict_reason={True: "match", False: "mismatch"}.get(verdict),
                      extracted_answer=extracted, rejected_by=None if (bool(verdict) if kept is None else kept)
                      else {True: "repetition", False: "wrong_answer", None: "unverifiable"}[verdict])


@pytest.fixture
def pairs_wh(tmp_path, make_trace):
    t = [
        # p0: wrong, right, wrong but truncated, right, wrong, unverifiable
        sample(make_trace, 0, 0, False, "<think>0 and 2 make 3.</think>\n\\boxed{3}", extracted="3"),
        sample(make_trace, 0, 1, True, "<think>0 and 2 make 2.</think>\n\\boxed{2}", extracted="2"),
        sample(make_trace, 0, 2, False, "<think>0 and 2 make", finish="length"),
        sample(make_trace, 0, 3, True, "<think>Adding 2 to 0 gives 2.</think>\n\\boxed{2}", extracted="2"),
        sample(make_trace, 0, 4, False, "<think>0 and 2 make 4.</think>\n\\boxed{4}", extracted="4"),
        sample(make_trace, 0, 5, None, "<think>Hmm.</think>\n\\boxed{x}"),
        # p1: right only (and an unverifiable one): nothing to pair
        sample(make_trace, 1, 0, True, "<think>1 and 2 make 3.</think>\n\\boxed{3}", extracted="3"),
        sample(make_trace, 1, 1, None, "<think>Hmm.</think>\n\\boxed{y}"),
        # p2: the right sample was not kept (a filter dropped it): nothing to pair
        sample(make_trace, 2, 0, True, "<think>2 and 2 make 4.</think>\n\\boxed{4}", kept=False, extracted="4"),
        sample(make_trace, 2, 1, False, "<think>2 and 2 make 5.</think>\n\\boxed{5}", extracted="5"),
        # p3: a wrong sample that never closed its reasoning, then a right one
        sample(make_trace, 3, 0, False, "<think>3 and 2 make 6, so \\boxed{6}", extracted="6"),
        sample(make_trace, 3, 1, True, "<think>3 and 2 make 5.</think>\n\\boxed{5}", extracted="5"),
    ]
    wh = Warehouse(tmp_path / "wh")
    wh.write_part("run-a", 0, t)
    wh.write_run({"run_id": "run-a", "status": "finished", "teacher": "smollm2-135m", "backend": "vllm",
                  "recipe": {"n": 6, "dataset": "builtin:addition", "verifier": "math"}, "versions": {},
                  "command": "distill run x.yaml", "timings": {}})
    wh.refresh()
    return tmp_path / "wh"


def rows_of(folder):
    return pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()


def test_dpo_pairs_the_ith_kept_correct_with_the_ith_wrong_sample(pairs_wh, tmp_path):
    res = export(pairs_wh, tmp_path / "out", variant="dpo", pairs_per_problem=2)
    rows = rows_of(tmp_path / "out")
    assert res.splits == {"train": 3}
    # truncated and unverifiable samples are never rejected ones; p1 and p2 have no pair
    assert sorted(tuple(r["parents"]) for r in rows) == [("t01", "t00"), ("t03", "t04"), ("t31", "t30")]
    r = next(r for r in rows if r["parents"] == ["t01", "t00"])
    assert r["prompt"] == [{"role": "user", "content": "What is 0 + 2?"}]  # the question only, as TRL's shape wants
    assert r["chosen"] == [{"role": "assistant", "content": "<think>\n0 and 2 make 2.\n</think>\n\n\\boxed{2}"}]
    assert r["rejected"] == [{"role": "assistant", "content": "<think>\n0 and 2 make 3.\n</think>\n\n\\boxed{3}"}]
    assert (r["problem_id"], r["rejected_answer"], r["reference"]) == ("p0", "3", "2")
    # a wrong sample that never closed its reasoning is written as the teacher wrote it
    unclosed = next(r for r in rows if r["problem_id"] == "p3")
    assert unclosed["rejected"][0]["content"] == "<think>3 and 2 make 6, so \\boxed{6}"
    assert "at most 2 pair(s) per problem" in res.card and "DPOTrainer" in res.card


def test_dpo_default_is_one_pair_per_problem_and_repeats_byte_for_byte(pairs_wh, tmp_path):
    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "out").rglob("*.*"))}

    export(pairs_wh, tmp_path / "out", variant="dpo", command="distill export --variant dpo")
    assert sorted(tuple(r["parents"]) for r in rows_of(tmp_path / "out")) == [("t01", "t00"), ("t31", "t30")]
    first = digest()
    export(pairs_wh, tmp_path / "out", variant="dpo", command="distill export --variant dpo", overwrite=True)
    assert digest() == first


def test_dpo_with_nothing_to_pair_says_how_many_problems_had_both(pairs_wh, tmp_path):
    with pytest.raises(DistillError, match=r"^no preference pairs: 0 of 2 selected problems have both a kept "
                                           r"verified-correct sample and a wrong \(not truncated\) one"):
        export(pairs_wh, tmp_path / "out", variant="dpo", where="problem_id in ('p1', 'p2')")
    with pytest.raises(DistillError, match="--pairs-per-problem must be >= 1"):
        export(pairs_wh, tmp_path / "out", variant="dpo", pairs_per_problem=0)
    assert not (tmp_path / "out").exists()


def test_journey_rows_mark_their_wrong_paths_and_other_rows_none(pairs_wh, tmp_path):
    export(pairs_wh, tmp_path / "out", variant="mixed", max_wrong=2)
    rows = rows_of(tmp_path / "out")
    assert all(r["wrong_spans"] == [] for r in rows if not r["parents"])  # shortcut rows
    journeys = [r for r in rows if r["parents"] and r["problem_id"] == "p0"]
    assert len(journeys) == 2
    for r in journeys:
        text = r["messages"][1]["content"]
        marked = [text[s["start"]:s["end"]] for s in r["wrong_spans"]]
        # the two wrong paths, each followed by its noticing; the correct path is not marked
        assert sorted(marked) == ["0 and 2 make 3.", "0 and 2 make 4."]
        for s in r["wrong_spans"]:
            assert text[s["end"]:].startswith("\n\nThat gives ")
        assert text.rstrip().endswith("\\boxed{2}") and "make 2." not in "".join(marked)


def test_teacher_journey_spans_are_its_wrong_branches():
    reasoning = "0 and 2 make 3.\n\nWait, 3 is wrong; 0 and 2 make 4.\n\nNo: adding 2 to 0 gives 2.\n\nSo 2."
    row = {"sampling": '{"branches":2,"journey":"teacher"}', "reasoning": reasoning, "parents": ["t00"]}
    assert [reasoning[a:b] for a, b in wrong_path_spans(row)] == ["0 and 2 make 3.",
                                                                 "Wait, 3 is wrong; 0 and 2 make 4."]
    # parts missing: nothing is marked rather than the wrong thing
    assert wrong_path_spans({**row, "reasoning": "0 and 2 make 3. Then 2."}) == []
    assert wrong_path_spans({"sampling": "{}", "reasoning": reasoning}) == []


def test_masked_labels_are_minus_100_exactly_over_the_prompt_and_the_wrong_path():
    # "Q?" | "bad." "\n\n" "Oops." | where the tokens' characters are [start, end)
    ids = [11, 12, 13, 14, 15, 16]
    offsets = [(0, 2), (2, 6), (6, 8), (8, 13), (13, 14), (14, 15)]
    assert mask_labels(ids, offsets, 1, [(2, 6)]) == [-100, -100, 13, 14, 15, 16]
    assert mask_labels(ids, offsets, 1) == [-100, 12, 13, 14, 15, 16]  # full: only the prompt is out
    # a token that straddles the span's end is out too: part of it is the wrong path
    assert mask_labels(ids, offsets, 1, [(2, 7)]) == [-100, -100, -100, 14, 15, 16]


def test_pipeline_masked_students_train_on_their_variants_rows():
    from distill.flows.pipeline import PipelineConfig, data_variant

    cfg = PipelineConfig.build({"students": ["shortcut", "mixed", "mixed-masked"]})
    assert [data_variant(s) for s in cfg.students] == ["shortcut", "mixed", "mixed"]
