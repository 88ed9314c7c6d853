"""`distill rl`: GRPO with distill's verifiers as rewards, rollouts stored as warehouse rows, resume."""
import json

import pytest

from distill.errors import ConfigError
from distill.generators.problems import load_problems
from distill.trainers.rl import (RLConfig, Rollouts, accuracy, as_reward, format_reward, language, load_rl_config,
                                 load_rl_problems, run_id, stored_steps, train_rl)
from distill.verifiers import verify_batch
from distill.warehouse.schema import Trace, make_trace_id
from distill.warehouse.store import Warehouse
from tests.conftest import ROOT


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# -- rewards ----------------------------------------------------------------------------------------------
def test_accuracy_reward_is_the_verdict_and_none_when_unverifiable():
    right = said("<think>3 plus 4 is 7.</think>\n\\boxed{7}")
    assert accuracy(None, [right, right, right], reference=["7", "8", "???"]) == [1.0, 0.0, None]


def test_accuracy_reward_takes_plain_text_completions_too():
    assert accuracy(None, ["<think>2 and 2</think> \\boxed{4}"], reference=["4"]) == [1.0]


def test_format_reward_is_r1s_think_then_answer():
    assert format_reward(None, [said("<think>3 plus 4 is 7.</think> \\boxed{7}"), said("\\boxed{7}"),
                                said("<think></think> 7")]) == [1.0, 0.0, 0.0]


def test_language_reward_is_the_share_of_the_reasoning_in_the_target_language():
    english, mixed = language(None, [said("<think>3 plus 4 is 7.</think> 7"),
                                     said("<think>3 plus 4 is 7. 然后我们检查答案是否正确。</think> 7")])
    assert english == 1.0
    assert 0.0 < mixed < 0.5  # 6 English letters against 14 Chinese characters weighing 3 each


# -- the recipe -------------------------------------------------------------------------------------------
def test_the_example_recipe_loads():
    cfg = load_rl_config(ROOT / "recipes" / "rl-default.yaml")
    assert cfg.dataset == "builtin:addition" and cfg.model == "smollm2-135m"
    assert set(cfg.reward_weights) == {"accuracy", "format", "language"}


@pytest.mark.parametrize("change, says", [
    ({"num_generations": 3}, "rl key 'num_generations': expected a whole number >= 2 that divides"),
    ({"reward_weights": {"accuracy": 1.0, "style": 1.0}}, "rl key 'reward_weights': expected a mapping of accuracy"),
    ({"verifier": "maths"}, "rl key 'verifier': expected one of code, countdown, format, math"),
    ({"verifier": "math+judge"}, "an LLM judge is not an RL reward here"),
    ({"learning_rate": "1e-5"}, "YAML reads 1e-5 as text"),
])
def test_a_bad_rl_key_is_one_clear_line(change, says):
    with pytest.raises(ConfigError) as e:
        RLConfig.build(change)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_run_id_keeps_through_execution_keys_and_changes_with_training_keys():
    cfg = RLConfig.build({"name": "t"})
    assert run_id(cfg) == run_id(cfg.replace(max_steps=50, resume=True, save_steps=5))
    assert run_id(cfg) != run_id(cfg.replace(learning_rate=1.0e-5))
    assert run_id(cfg).startswith("rl-t-")


# -- rollouts as rows ------------------------------------------------------------------------------------
class State:  # what TRL passes as `trainer_state`: the optimizer steps done so far
    def __init__(self, global_step: int):
        self.global_step = global_step


def test_rollouts_are_scored_once_per_reward_and_stored_as_rows_of_the_step_they_train(tmp_path):
    cfg = RLConfig.build({"name": "t", "max_completion_length": 4, "warehouse": str(tmp_path / "wh")})
    wh = Warehouse(cfg.warehouse)
    rollouts = Rollouts(cfg, wh, run_id(cfg), eos_token_id=2)
    prompt = [{"role": "user", "content": "What is 3 + 4?"}]
    texts = ["<think>3 plus 4 is 7.</think> \\boxed{7}", "\\boxed{8}", "<think>3 plus"]
    kwargs = {"problem_id": ["p1", "p1", "p2"], "reference": ["7", "7", "???"], "question": ["q"] * 3,
              "source": ["s"] * 3, "domain": ["math"] * 3}
    rewards = {f.__name__: f(prompts=[prompt] * 3, completions=[said(t) for t in texts],
                             completion_ids=[[5, 2], [5, 6, 2], [5, 6, 7, 8]], trainer_state=State(2), **kwargs)
               for f in rollouts.reward_funcs()}
    assert rewards == {"accuracy": [1.0, 0.0, None], "format": [1.0, 0.0, 0.0], "language": [1.0, 1.0, 1.0]}
    rollouts.flush(2)
    assert stored_steps(wh, run_id(cfg)) == []  # the batch trains step 3: not stored before that step ends
    rollouts.flush(3)
    wh.refresh()
    _, rows = wh.query("SELECT scores['step'], scores['reward'], scores['reward_accuracy'], correct, verdict_reason, "
                       "finish_reason, completion_tokens, kind FROM traces ORDER BY sample_index")
    assert rows == [(3.0, 1.6, 1.0, True, "match", "stop", 2, "rollout"),
                    (3.0, 0.1, 0.0, False, "mismatch", "stop", 3, "rollout"),
                    # unverifiable: no accuracy term, the other rewards still count; cut at max_completion_length
                    (3.0, 0.1, None, None, "unparseable_reference", "length", 4, "rollout")]


# -- problems from a stored run's pass-rate band ------------------------------------------------------------
def _stored_samples(wh: Warehouse, run: str, problems, rights: list[int], n: int = 4) -> None:
    rows = []
    for p, right in zip(problems, rights):
        for i in range(n):
            prompt = [{"role": "user", "content": p.question}]
            rows.append(Trace(trace_id=make_trace_id(prompt, "m", {}, i) + run, run_id=run, problem_id=p.problem_id,
                              sample_index=i, source=p.source, domain=p.domain, prompt=prompt, reference=p.reference,
                              teacher="m", backend="test", sampling="{}", completion="", reasoning="", answer="",
                              finish_reason="stop", correct=i < right, kept=i < right))
    wh.write_part(run, 0, rows)
    wh.refresh()


def test_pass_rate_from_keeps_the_problems_in_the_band(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    problems = load_problems("builtin:addition", options={"count": 4, "digits": [1], "seed": 0})
    _stored_samples(wh, "cheap", problems[:3], rights=[0, 2, 4])  # pass rates 0, 0.5, 1; the 4th never sampled
    cfg = RLConfig.build({"dataset_options": {"count": 4, "digits": [1], "seed": 0}, "pass_rate_from": "cheap",
                          "warehouse": str(wh.root)})
    kept, info = load_rl_problems(cfg, wh)
    assert [p.problem_id for p in kept] == [problems[1].problem_id]
    assert info == {"pass_rate_from": "cheap", "problems_skipped": {"pass_rate": 2, "not_in_run": 1}}


def test_pass_rate_from_an_unknown_run_is_one_clear_line(tmp_path):
    cfg = RLConfig.build({"pass_rate_from": "nope", "warehouse": str(tmp_path / "wh")})
    with pytest.raises(ConfigError, match="pass_rate_from: no run 'nope'"):
        load_rl_problems(cfg, Warehouse(cfg.warehouse))


def test_a_fresh_start_over_a_run_with_stored_rollouts_is_refused(tmp_path):
    cfg = RLConfig.build({"name": "t", "warehouse": str(tmp_path / "wh"), "output_dir": str(tmp_path / "out")})
    wh = Warehouse(cfg.warehouse)
    wh.write_part(run_id(cfg), 1, [Trace(trace_id="x", run_id=run_id(cfg), problem_id="p", sample_index=0,
                                        source="s", domain="math", prompt=[], reference="1", teacher="m",
                                        backend="trl-grpo", sampling="{}", completion="", reasoning="", answer="",
                                        finish_reason="stop", kind="rollout", scores={"step": 1.0})])
    with pytest.raises(ConfigError, match="already holds rollouts of steps 1-1.*resume=true"):
        train_rl(cfg)
    assert wh.part_exists(run_id(cfg), 1)  # nothing was lost


# -- GRPO on the real embedded model -----------------------------------------------------------------------
@pytest.mark.slow
def test_grpo_steps_change_the_weights_store_verified_rollouts_and_resume(tmp_path):
    import torch
    from safetensors.torch import load_file

    from distill.generators.models import resolve_model

    cfg = RLConfig.build({
        "name": "tiny", "dataset_options": {"count": 4, "digits": [2], "seed": 1},
        "system_prompt": "Think step by step inside <think></think>, then give the final answer in \\boxed{}.",
        "few_shot": [{"question": "What is 12 + 25?", "answer": "<think>12 plus 25 is 37.</think>\n\\boxed{37}"}],
        "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 20, "temperature": 1.0,
        "learning_rate": 1.0e-5, "max_steps": 1, "save_steps": 1, "output_dir": str(tmp_path / "out"),
        "warehouse": str(tmp_path / "wh")})
    result = train_rl(cfg)
    wh, run = Warehouse(cfg.warehouse), result["run_id"]
    assert result["global_step"] == 1

    # every rollout is a row of its step; the accuracy reward is the verifier's verdict on the same completion
    query = ("SELECT scores['step']::INT, completion, reference, correct, scores['reward_accuracy'], scores['reward'] "
             "FROM traces WHERE run_id = ? AND kind = 'rollout' ORDER BY 1, sample_index")
    rows = wh.query(query, [run])[1]
    assert [r[0] for r in rows] == [1] * 4
    verdicts = verify_batch("math", [(r[1], r[2]) for r in rows])
    assert [r[4] for r in rows] == [as_reward(v) for v in verdicts]
    assert [r[3] for r in rows] == [v.correct for v in verdicts]
    # ... and what TRL logged for the step is the mean of the stored rewards
    (step, reward, acc), = wh.query("SELECT step, reward, accuracy FROM rollout_steps WHERE run_id = ?", [run])[1]
    (logged,) = result["rewards"]
    assert (logged["step"], logged["accuracy"], logged["reward"]) == (step, pytest.approx(acc), pytest.approx(reward))
    # rollouts are no samples: the generation views do not count them
    assert wh.query("SELECT count(*) FROM funnel WHERE run_id = ?", [run])[1] == [(0,)]
    assert wh.query("SELECT count(*) FROM accepted WHERE run_id = ?", [run])[1] == [(0,)]

    # GRPO moved the weights (a group held a better and a worse completion, so some advantage was not 0)
    assert wh.query("SELECT count(*) FROM (SELECT problem_id FROM traces WHERE run_id = ? GROUP BY ALL "
                    "HAVING stddev_pop(scores['reward']) > 0)", [run])[1][0][0] > 0
    before = load_file(f"{resolve_model(cfg.model)}/model.safetensors")
    after = load_file(f"{cfg.output_dir}/model.safetensors")
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)

    # A crash after step 2's rollouts were stored but before its checkpoint (the fault, injected: a part of step 2
    # and no checkpoint-2). Resume continues from checkpoint-1 at step 2 and replaces them; nothing is stored twice.
    stale = wh.read_part(run, 1)
    for t in stale:
        t.completion, t.scores = "stale", {**t.scores, "step": 2.0}
    wh.write_part(run, 2, stale)
    again = train_rl(cfg.replace(resume=True, max_steps=2))
    assert (again["run_id"], again["resumed_from"], again["global_step"]) == (run, 1, 2)
    rows = wh.query(query, [run])[1]
    assert [r[0] for r in rows] == [1] * 4 + [2] * 4 and "stale" not in [r[1] for r in rows]
    assert [r[4] for r in rows] == [as_reward(v) for v in verify_batch("math", [(r[1], r[2]) for r in rows])]
    record = json.loads((tmp_path / "wh" / "runs" / f"{run}.json").read_text())
    assert record["status"] == "finished" and [c["from_step"] for c in record["calls"]] == [0, 1]
    assert wh.query("SELECT status FROM runs WHERE run_id = ?", [run])[1] == [("finished",)]


@pytest.mark.parametrize("argv, text", [
    (["rl", "no-such.yaml"], "error: rl recipe not found: no-such.yaml"),
    (["rl", str(ROOT / "recipes" / "rl-default.yaml"), "--set", "num_generation=4"],
     "error: --set: unknown key 'num_generation' — did you mean 'num_generations'?"),
    (["rl", str(ROOT / "recipes" / "rl-default.yaml"), "--set", "num_generations=3"],
     "error: rl key 'num_generations': expected a whole number >= 2 that divides"),
])
def test_distill_rl_bad_input_is_one_line_and_exit_2(argv, text, monkeypatch, capsys):
    import sys

    from distill.flows import cli

    monkeypatch.setattr(sys, "argv", ["distill", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith(text) and "\n" not in err
