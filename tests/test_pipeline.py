"""distill pipeline on the real model, tiny: generate → journeys → export → train → evaluate."""
import json

import yaml

from tests.conftest import ROOT, run_cli
from distill.warehouse.store import Warehouse
import pytest

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess


def test_tiny_pipeline_compares_base_and_students_on_problems_none_trained_on(tmp_path):
    recipe = {
        "name": "tiny", "generate": str(ROOT / "recipes" / "default.yaml"),
        "generate_set": {"name": "tiny", "dataset_options": {"count": 8, "digits": [1, 2], "seed": 0}, "n": 4,
                         "backend": "transformers", "warehouse": str(tmp_path / "wh")},
        "journey": "template", "train": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 2},
        # a tiny version of every kind of arm: inference-time scaling, SFT, DPO, RL from base and after SFT
        "arms": ["base", "few-shot", "shortcut", "mixed", "dpo", "grpo", "grpo-shortcut"], "few_shot_n": 2,
        "dpo": {"max_steps": 2}, "rl": {"max_steps": 2, "max_completion_length": 16, "save_steps": 1, "num_generations": 2,
               "per_device_train_batch_size": 4},
        # one-digit sums: only 100 exist, so some eval problems may repeat generation ones and must be removed
        "eval_options": {"count": 12, "digits": [1], "seed": 1}, "eval_n": 2, "eval_max_tokens": 24,
        "eval_backend": "transformers", "out_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = run_cli("pipeline", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in s["results"]] == recipe["arms"]
    assert all(f"| {a} |" in proc.stdout for a in recipe["arms"]) and "pass@1" in proc.stdout

    wh = Warehouse(tmp_path / "wh")
    trained_on = {r[0] for r in wh.query("select distinct prompt[len(prompt)].content from traces "
                                         "where run_id = ? and kind = 'sample'", [s["run_id"]])[1]}
    from distill.generators.problems import load_problems

    asked = load_problems("builtin:addition", options=recipe["eval_options"])
    held = [p for p in asked if p.question not in trained_on]
    assert s["heldout"]["problems"] == len(held) and s["heldout"]["removed_as_seen"] == 12 - len(held)
    # every result is over the same held-out problems, and stored in the evals view
    assert {r["problems"] for r in s["results"]} == {len(held)}
    assert wh.query("select count(*) from evals")[1] == [(7,)]
    # the students were trained on what the run kept: shortcut rows = kept samples, mixed = those and the journeys
    kept = wh.query("select count(*) from traces where run_id = ? and kind = 'sample' and kept", [s["run_id"]])[1][0][0]
    journeys = wh.query("select count(*) from traces where run_id = ? and kind = 'journey' and kept",
                        [s["run_id"]])[1][0][0]
    assert (s["examples"]["shortcut"], s["examples"]["mixed"]) == (kept, kept + journeys) and journeys > 0
    assert all(s["training"][v]["global_step"] == 3 for v in ("shortcut", "mixed"))
    for r in s["results"][1:]:
        lo, hi = r["gain_ci"]
        assert lo <= r["gain"] <= hi
    few = s["results"][1]
    assert few["n"] == few["k"] == 2 and few["model"] == "smollm2-135m"

    # DPO trained on the run's pairs: each a right and a wrong sample of one problem
    pairs = wh.query("select problem_id from traces where run_id = ? and kind = 'sample' group by problem_id "
                     "having bool_or(kept and correct) and bool_or(correct = false)", [s["run_id"]])[1]
    assert s["examples"]["dpo"] == len(pairs) > 0 and s["training"]["dpo"]["global_step"] == 2
    # GRPO: rollouts of each arm's run in the warehouse, 2 steps × 4, on the run's problems
    rollouts = {}
    for arm in ("grpo", "grpo-shortcut"):
        rl_run = s["training"][arm]["run_id"]
        (steps, rows, tokens), = wh.query("select count(distinct scores['step']), count(*), sum(completion_tokens) "
                                          "from traces where run_id = ? and kind = 'rollout'", [rl_run])[1]
        assert (steps, rows) == (2, 8) and s["training"][arm]["global_step"] == 2
        rollouts[arm] = tokens
    # compute: teacher tokens of the data behind each arm, training tokens in the loss, none for base
    c, g = s["compute"], s["generation"]
    journey_tokens = sum(j["completion_tokens"] for j in s["journeys"].values())
    assert c["base"] == {"teacher_tokens": 0, "training_tokens": 0, "wall": 0.0}
    assert c["few-shot"]["teacher_tokens"] == few["completion_tokens"] > 0 and c["few-shot"]["training_tokens"] == 0
    assert c["shortcut"]["teacher_tokens"] == c["dpo"]["teacher_tokens"] == g["completion_tokens"] > 0
    assert c["mixed"]["teacher_tokens"] == g["completion_tokens"] + journey_tokens
    assert c["shortcut"]["training_tokens"] == s["training"]["shortcut"]["loss_tokens"] > 0
    assert c["grpo"] == {"teacher_tokens": 0, "training_tokens": rollouts["grpo"], "wall": c["grpo"]["wall"]}
    assert c["grpo-shortcut"]["training_tokens"] == rollouts["grpo-shortcut"] + c["shortcut"]["training_tokens"]
    assert c["grpo-shortcut"]["teacher_tokens"] == g["completion_tokens"]
    assert all(v["wall"] is not None and v["wall"] >= 0 for v in c.values())

    # a rerun does not generate or train again
    again = run_cli("pipeline", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads((tmp_path / "out" / "results.json").read_text())
    run = wh.read_run(s["run_id"])
    assert s2["run_id"] == s["run_id"] and run["shards_resumed"] == run["shards"]
    assert all(s2["timings"][f"train_{a}"] < 5 for a in recipe["arms"][2:])
    # nor evaluate again: the same weights on the same problems give the stored results
    assert s2["results"] == s["results"] and s2["timings"]["evaluate"] < 5 and s2["compute"] == s["compute"]
    assert wh.query("select count(*) from evals")[1] == [(7,)]


def test_heldout_filter_removes_generation_problems_when_the_recipe_has_a_prompt_template(tmp_path, make_trace):
    """gsm8k-r1.yaml wraps each question in a template: the stored prompt is not the question, yet every
    problem generation used must leave the eval set (by its question text, or by its problem id)."""
    from distill.flows.generate import problems_for
    from distill.flows.pipeline import PipelineConfig, heldout_problems, seen_problems
    from distill.flows.recipe import load_recipe
    from distill.generators.base import build_messages
    from distill.warehouse.schema import make_trace_id

    gen_path = ROOT / "recipes" / "gsm8k-r1.yaml"
    recipe = load_recipe(gen_path, {"dataset": "data/gsm8k-test-50.jsonl", "limit": 6, "warehouse": str(tmp_path / "wh")})
    assert recipe.prompt.prompt_template != "{question}"
    problems = problems_for(recipe, gen_path.parent)
    traces = []
    for k, p in enumerate(problems):
        prompt = build_messages(p.question, recipe.prompt.system_prompt, recipe.prompt.few_shot, recipe.prompt.prompt_template)
        assert prompt[-1]["content"].strip() != p.question.strip()  # what the old comparison looked at
        traces.append(make_trace(trace_id=make_trace_id(prompt, recipe.teacher.model, "{}", 0), run_id="g", problem_id=p.problem_id,
                                 prompt=prompt, question=None if k == 0 else p.question))  # row 0: written before `question`
    wh = Warehouse(recipe.execution.warehouse)
    wh.write_part("g", 0, traces)
    wh.refresh()
    questions, ids = seen_problems(wh, "g", recipe.prompt.prompt_template)
    assert questions == {p.question.strip() for p in problems} and ids == {p.problem_id for p in problems}

    # the eval set: the file's first 10 questions under another name, so problem ids differ and only text can match
    rows = [json.loads(line) for line in (ROOT / "recipes" / "data" / "gsm8k-test-50.jsonl").read_text().splitlines()[:10]]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PipelineConfig(eval_dataset=str(tmp_path / "eval.jsonl"), eval_options={})
    held, removed = heldout_problems(cfg, tmp_path, questions, ids)
    assert removed == 6 and not {p.question for p in held} & {p.question for p in problems}
    # by id alone: the same file as generation, questions not compared
    cfg = PipelineConfig(eval_dataset="data/gsm8k-test-50.jsonl", eval_options={})
    held, removed = heldout_problems(cfg, gen_path.parent, set(), ids)
    assert removed == 6 and len(held) == 44
