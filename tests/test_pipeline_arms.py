"""The pipeline's method arms, without a model: which arms run, in what order, and the compute each is charged."""
import pytest

from distill.errors import ConfigError
from distill.flows.pipeline import PipelineConfig, arm_compute, results_markdown


def test_arms_default_to_base_and_students_and_keep_the_tables_order():
    assert PipelineConfig.build({"students": ["mixed"]}).arm_list() == ["base", "mixed"]
    cfg = PipelineConfig.build({"arms": ["grpo-shortcut", "shortcut", "few-shot", "dpo", "base"]})
    assert cfg.arm_list() == ["base", "few-shot", "shortcut", "dpo", "grpo-shortcut"]


@pytest.mark.parametrize("arms, says", [
    (["base", "grpo-shortcut"], "holds shortcut too"),
    (["base", "ppo"], "a list of distinct arms among base, few-shot"),
    (["base", "base"], "distinct arms"),
])
def test_bad_arms_are_one_clear_error(arms, says):
    with pytest.raises(ConfigError, match="pipeline key 'arms'") as e:
        PipelineConfig.build({"arms": arms})
    assert says in str(e.value)


def _result(label, n=4, tokens=None):
    return {"label": label, "n": n, "k": n, "pass_at_1": 0.5, "pass_at_1_ci": (0.4, 0.6), "maj_at_k": 0.5,
            "maj_at_k_ci": (0.4, 0.6), "boxed_rate": 1.0, "strict_pass_at_1": 0.5, "strict_pass_at_1_ci": (0.4, 0.6),
            "completion_tokens": tokens, "wall": 12.0}


def test_each_arm_is_charged_the_teacher_tokens_behind_its_data_and_its_own_training():
    arms = ["base", "few-shot", "shortcut", "mixed", "dpo", "dpo-shortcut", "grpo", "grpo-shortcut"]
    trained = {"shortcut": {"loss_tokens": 1000, "wall": 100.0}, "mixed": {"loss_tokens": 1500, "wall": 150.0},
               "dpo": {"loss_tokens": 800, "wall": 60.0}, "dpo-shortcut": {"loss_tokens": 800, "wall": 70.0},
               "grpo": {"rollout_tokens": 5000, "wall": 300.0}, "grpo-shortcut": {"rollout_tokens": 2000, "wall": 250.0}}
    results = [_result(a) for a in arms if a != "few-shot"] + [_result("few-shot", 8, tokens=9000)]
    run = {"timings": {"generate": 600.0}, "journeys": {"teacher": {"completion_tokens": 4000, "seconds": 200.0}}}
    c = arm_compute(arms, trained, results, {"completion_tokens": 20000}, run)
    assert c["base"] == {"teacher_tokens": 0, "training_tokens": 0, "wall": 0.0}
    assert c["few-shot"] == {"teacher_tokens": 9000, "training_tokens": 0, "wall": 12.0}
    assert c["shortcut"] == {"teacher_tokens": 20000, "training_tokens": 1000, "wall": 700.0}
    assert c["mixed"] == {"teacher_tokens": 24000, "training_tokens": 1500, "wall": 950.0}  # + the journeys
    assert c["dpo"] == {"teacher_tokens": 20000, "training_tokens": 800, "wall": 660.0}
    assert c["dpo-shortcut"] == {"teacher_tokens": 20000, "training_tokens": 1800, "wall": 770.0}
    assert c["grpo"] == {"teacher_tokens": 0, "training_tokens": 5000, "wall": 300.0}  # no teacher data at all
    assert c["grpo-shortcut"] == {"teacher_tokens": 20000, "training_tokens": 3000, "wall": 950.0}
    # a student trained before distill recorded its training: unknown, not zero
    old = arm_compute(["shortcut"], {"shortcut": {"examples": 3}}, [_result("shortcut")], {"completion_tokens": 5}, run)
    assert old["shortcut"] == {"teacher_tokens": 5, "training_tokens": None, "wall": None}

    s = {"run_id": "r", "generation": {"problems": 2, "samples": 8, "correct": 3, "kept": 2},
         "heldout": {"dataset": "builtin:addition", "options": {}, "problems": 4, "removed_as_seen": 0, "n": 4},
         "examples": {"shortcut": 2, "mixed": 3, "dpo": 1, "dpo-shortcut": 1}, "results": results,
         "training": {"grpo": {"problems": 40}}, "compute": c, "timings": {"total": 1.0}}
    md = results_markdown(s)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert set(arms) <= set(rows)
    assert rows["few-shot"].split(" | ")[2] == "8" and "| 9.0k |" in rows["few-shot"]
    assert "40 problems, verifier reward" in rows["grpo"] and rows["grpo"].endswith("| 0 | 5.0k | 300 |")
    assert rows["mixed"].endswith("| 24k | 1.5k | 950 |")
