import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from distill.trainers.evaluate import EvalResult, benchmark_problems, majority, mean_ci, paired_diff_ci, save, wilson
from distill.warehouse.store import Warehouse


def test_majority_takes_the_most_common_answer():
    assert majority([("7", True), ("8", False), ("7", True), (None, False)]) is True
    assert majority([("8", False), ("8", False), ("7", True)]) is False


def test_majority_tie_goes_to_the_first_seen_and_no_votes_is_wrong():
    assert majority([("8", False), ("7", True)]) is False
    assert majority([(None, False), (None, None)]) is False


def test_wilson_interval_known_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # not (0, 0), as a normal approximation says
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_mean_ci_is_wilson_with_problems_as_n():
    m, ci = mean_ci([1.0, 0.0, 1.0, 1.0])
    assert m == 0.75 and ci == wilson(3, 4)
    # pass@1 per problem is a mean over its samples: 4 problems, not 16 samples
    m, ci = mean_ci([0.75, 0.5, 1.0, 0.75])
    assert m == 0.75 and ci == wilson(3, 4)
    assert mean_ci([1.0]) == (1.0, pytest.approx((0.2065, 1.0), abs=1e-4))


def test_paired_bootstrap_known_values_and_reproducible():
    # two problems, gains 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    assert paired_diff_ci([0.0, 0.0], [0.0, 1.0]) == (0.5, (0.0, 1.0))
    assert paired_diff_ci([0.5] * 3, [1.0] * 3) == (0.5, (0.5, 0.5))  # the same gain everywhere
    a = [0.0, 0.25, 0.5, 0.25, 0.0, 1.0, 0.75, 0.5, 0.25, 0.0] * 10
    b = [0.5, 0.25, 1.0, 0.75, 0.25, 1.0, 0.75, 0.25, 0.75, 0.5] * 10
    m, (lo, hi) = paired_diff_ci(a, b)
    assert m == pytest.approx(0.25)
    # 100 problems: the bootstrap agrees with the normal approximation 0.25 ± 1.96 · 0.2752 / sqrt(100)
    assert (lo, hi) == pytest.approx((0.196, 0.304), abs=0.005)
    assert paired_diff_ci(a, b) == (m, (lo, hi))  # seeded
    with pytest.raises(ValueError, match="same, non-empty set of problems"):
        paired_diff_ci([0.0], [0.0, 1.0])


def test_shipped_benchmarks_load():
    assert len(benchmark_problems("math500", limit=5)) == 5
    assert benchmark_problems("gsm8k", limit=1)[0].reference == "18"
    held_out = {p.question for p in benchmark_problems("addition")}
    from distill.generators.problems import load_problems

    train = {p.question for p in load_problems("builtin:addition", options={"count": 48, "digits": [1, 2], "seed": 0})}
    assert len(held_out & train) < len(held_out) // 4  # mostly unseen problems


@pytest.mark.slow
def test_eval_on_the_real_model_stores_a_consistent_result(tmp_path):
    proc = run_cli("eval", "--model", "smollm2-135m", "--benchmark", "addition", "--limit", "3", "--n", "2",
                   "--backend", "transformers", "--max-tokens", "24", "--prompt-from", "recipes/default.yaml",
                   "--warehouse", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass@1" in proc.stdout and "maj@2" in proc.stdout
    (p1, n, problems), = Warehouse(tmp_path).query("select pass_at_1, n, problems from evals")[1]
    assert (n, problems) == (2, 3) and 0.0 <= p1 <= 1.0
    assert p1 * 6 == pytest.approx(round(p1 * 6))  # a whole number of correct samples out of 6


@pytest.mark.slow
def test_eval_says_why_when_no_answer_is_boxed(tmp_path):
    """Zero-shot, the base model never boxes (FACTS.md: 0.00 boxed): the report says why, in one line."""
    proc = run_cli("eval", "--model", "smollm2-135m", "--benchmark", "addition", "--limit", "2", "--n", "1",
                   "--backend", "transformers", "--max-tokens", "16", "--warehouse", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (boxed,), = Warehouse(tmp_path).query("select boxed_rate from evals")[1]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert boxed == 0  # the premise (FACTS.md)
    assert len(hints) == 1 and "\\boxed{}" in hints[0] and "--prompt-from" in hints[0]


@pytest.mark.slow
def test_eval_bad_k_is_one_line(tmp_path):
    proc = run_cli("eval", "--model", "smollm2-135m", "--benchmark", "addition", "--n", "2", "--k", "3",
                   "--warehouse", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "--k must be between 1 and --n (2)" in proc.stderr


def _result(eval_id: str) -> EvalResult:
    return EvalResult(eval_id, "m", "b", 1, 1, 1, 1.0, (1.0, 1.0), 1.0, (1.0, 1.0), 1.0, 1.0, (1.0, 1.0),
                      [{"problem_id": "p", "correct": 1, "samples": 1}])


def test_a_crash_while_saving_an_eval_leaves_the_evals_view_working(tmp_path, monkeypatch):
    save(_result("eval-a"), tmp_path)
    # a save that dies mid-write (disk full, kill): what it leaves must stay out of the view
    real = json.dumps
    monkeypatch.setattr("distill.trainers.evaluate.json.dumps", lambda *a, **k: real(*a, **k)[:20])
    monkeypatch.setattr("distill.files.os.replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        save(_result("eval-b"), tmp_path)
    monkeypatch.undo()
    # a kill -9 leaves its temporary file behind: one of the current naming, one of the old `.tmp-<id>.json`
    (tmp_path / "evals" / ".tmp-eval-c-x1y2.partial").write_text('{"eval_id": "eval-')
    (tmp_path / "evals" / ".tmp-eval-d.json").write_text('{"eval_id": "eval-')
    save(_result("eval-e"), tmp_path)  # clears the old-style leftover
    wh = Warehouse(tmp_path)
    wh.refresh()
    assert wh.query("select eval_id from evals order by 1")[1] == [("eval-a",), ("eval-e",)]
    assert not list((tmp_path / "evals").glob(".tmp-*.json"))


def test_eval_temp_files_are_unique_per_writer(tmp_path, monkeypatch):
    names = []
    real = os.replace
    monkeypatch.setattr("distill.files.os.replace", lambda a, b: (names.append(Path(a).name), real(a, b)))
    save(_result("eval-a"), tmp_path)
    save(_result("eval-a"), tmp_path)
    assert len(set(names)) == 2 and all(n.startswith(".tmp-eval-a.json-") and n.endswith(".partial") and not n.endswith(".json") for n in names)
    assert json.loads((tmp_path / "evals" / "eval-a.json").read_text())["eval_id"] == "eval-a"


def test_weights_key_names_the_weights_on_disk_not_the_path(tmp_path):
    """A pipeline rerun reuses a stored eval only for the same weights: a retrained student (same folder,
    new files) has another key; a Hub id or alias is its own key."""
    from distill.flows.pipeline import weights_key

    student = tmp_path / "students" / "shortcut"
    student.mkdir(parents=True)
    (student / "model.safetensors").write_bytes(b"a" * 10)
    first = weights_key(str(student))
    assert weights_key(str(student)) == first
    (student / "model.safetensors").write_bytes(b"b" * 11)  # retrained: other bytes, another size and time
    assert weights_key(str(student)) != first
    assert weights_key("org/some-model") == "org/some-model"
