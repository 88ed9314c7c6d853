import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.generators.problems import addition, load_problems
from distill.errors import DistillError

GSM8K_ROW = {"question": "Janet has 3 ducks and buys 4. How many ducks?",
             "answer": "She has 3 + 4 = <<3+4=7>>7 ducks.\n#### 7"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_builtin_addition_is_deterministic_with_exact_answers():
    a, b = load_problems("builtin:addition", options={"count": 10, "digits": [1, 2]}), \
        load_problems("builtin:addition", options={"count": 10, "digits": [1, 2]})
    assert [p.problem_id for p in a] == [p.problem_id for p in b]
    for p in a:
        x, y = p.question.removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(x) + int(y) == int(p.reference)
    assert len({p.problem_id for p in a}) == 10


def test_builtin_addition_mixes_digit_counts():
    qs = [q for q, _ in addition(count=4, digits=[1, 2])]
    assert [len(q.split()[2]) for q in qs] == [1, 2, 1, 2]


def test_gsm8k_answers_take_the_number_after_hashes(tmp_path):
    p = load_problems(str(write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW])))[0]
    assert p.reference == "7" and p.question == GSM8K_ROW["question"]


def test_shipped_gsm8k_slice_loads_relative_to_recipe_folder():
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    ps = load_problems("data/gsm8k-test-50.jsonl", base_dir=recipes)
    assert len(ps) == 50 and ps[0].reference == "18"


def test_problem_ids_do_not_depend_on_row_order(tmp_path):
    rows = [GSM8K_ROW, {"question": "What is 1 + 1?", "answer": "2"}]
    a = load_problems(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    b = load_problems(str(write_jsonl(tmp_path / "a.jsonl", rows[::-1])))
    assert {p.problem_id for p in a} == {p.problem_id for p in b}


def test_column_mapping_and_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "Compute $1+1$.", "solution_value": "2"}]), path)
    p = load_problems(str(path), question_field="problem", answer_field="solution_value")[0]
    assert (p.question, p.reference) == ("Compute $1+1$.", "2")


def test_limit_takes_the_first_rows(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]
    assert [p.reference for p in load_problems(str(write_jsonl(tmp_path / "l.jsonl", rows)), limit=2)] == ["1", "2"]


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(DistillError, match="dataset file not found: .*nope.jsonl"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_row_without_answer_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [GSM8K_ROW, {"question": "What is 2 + 2?", "answer": ""}])
    with pytest.raises(DistillError, match=r"row 1: no answer in field 'answer'"):
        load_problems(str(path))


def test_row_without_the_mapped_field_lists_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "What is 2 + 2?", "a": "4"}])
    with pytest.raises(DistillError, match=r"row 0: no field 'question' \(fields: q, a\)"):
        load_problems(str(path))


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n{not json\n")
    with pytest.raises(DistillError, match=r"bad.jsonl:2: not valid JSON"):
        load_problems(str(path))


def test_non_utf8_file_is_one_clear_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "caf\u00e9?", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DistillError, match="not UTF-8"):
        load_problems(str(path))


def test_unknown_builtin_task_lists_known():
    with pytest.raises(DistillError, match=r"unknown built-in task 'mul' \(known: addition\)"):
        load_problems("builtin:mul")


def test_unreachable_hub_dataset_is_one_clear_error():
    # HF_HUB_OFFLINE=1 (conftest): the datasets library must fail, and we must say which id.
    with pytest.raises(DistillError, match="could not load dataset 'no-such-org/no-such-set'"):
        load_problems("no-such-org/no-such-set")


def test_dataset_folder_goes_through_the_datasets_library(tmp_path):
    # The same code path as a Hub id (datasets.load_dataset), on a local folder of data files.
    write_jsonl(tmp_path / "train.jsonl", [GSM8K_ROW])
    p = load_problems(str(tmp_path), split="train")[0]
    assert p.reference == "7" and p.source == tmp_path.name


def test_builtin_addition_refuses_more_problems_than_a_digit_count_has():
    # one-digit sums have 100 distinct problems; 300 cycling through [1, 2] asks 150 of them (this hung before)
    with pytest.raises(DistillError, match="only 100 distinct 1-digit problems, asked 150"):
        addition(count=300, digits=[1, 2])
    assert len(addition(count=200, digits=[1, 2])) == 200


def test_two_dataset_folders_of_the_same_name_are_not_confused(tmp_path):
    # datasets caches a local folder whose README names its data files by the folder's name and those
    # relative paths: a second folder called `probs` was served the first one's rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.parquet\n---\n"
    for i, count in enumerate((1, 3)):
        folder = tmp_path / str(i) / "probs"
        (folder / "data").mkdir(parents=True)
        (folder / "README.md").write_text(card)
        pq.write_table(pa.Table.from_pylist([{**GSM8K_ROW, "question": f"q{i}-{k}"} for k in range(count)]),
                       folder / "data" / "train.parquet")
        assert [p.question for p in load_problems(str(folder), split="train")] == [f"q{i}-{k}" for k in range(count)]


# --- structured answers stay JSON (issue 13, point 1) ----------------------------------------

CODE_ANSWER = {"tests": "assert add(1,2)==3", "entry_point": "add"}


@pytest.mark.parametrize("answer", [CODE_ANSWER, {"numbers": [4, 7, 8, 8], "target": 24}, ["assert f(1) == 1"],
                                    {"tests": ["assert f(1) == 1"], "setup": "", "meta": {"n": 1}}])
def test_structured_answer_is_kept_as_json_not_python_repr(tmp_path, answer):
    p = load_problems(str(write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": answer}])))[0]
    assert json.loads(p.reference) == answer


def test_structured_answer_from_parquet_is_kept_as_json(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": CODE_ANSWER}]), path)
    assert json.loads(load_problems(str(path))[0].reference) == CODE_ANSWER


def test_structured_answer_with_hashes_is_not_cut_as_gsm8k(tmp_path):
    answer = {"tests": "assert f() == 1  #### not a GSM8K marker"}
    p = load_problems(str(write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": answer}])))[0]
    assert json.loads(p.reference) == answer


@pytest.mark.parametrize("answer", [{}, []])
def test_empty_structured_answer_names_the_row(tmp_path, answer):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": answer}])
    with pytest.raises(DistillError, match="row 0: no answer"):
        load_problems(str(path))


def test_structured_answer_asked_to_be_cut_as_gsm8k_is_one_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": CODE_ANSWER}])
    with pytest.raises(DistillError, match="row 0: .*structured"):
        load_problems(str(path), answer_format="gsm8k")
