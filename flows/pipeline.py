"""`distill pipeline RECIPE`: generate → journeys → export → train the arms → evaluate, as one Prefect flow.

It answers the question a user of distillation asks first: did the students get better, and is distillation
the best way to spend the compute? Each arm is one way to build a reasoning model from the same base model,
the four of the essay distill grew from:
- inference-time scaling: `few-shot`, the teacher itself (the generation recipe's prompt), `few_shot_n`
  samples a problem, voted (maj@k);
- SFT on the teacher's traces: `shortcut` (correct paths), `journey` / `mixed` (with journeys) and their
  `-masked` twins (the wrong paths out of the loss);
- preference tuning on the same run's right and wrong samples: `dpo` (from the base model), `dpo-shortcut`;
- RL with the verifier as reward, no teacher data: `grpo` (from the base model, R1-Zero), `grpo-shortcut`
  (from the shortcut student, R1's SFT then RL).
Every arm and the base model are evaluated zero-shot (few-shot: with its prompt) on held-out problems (none
of the generation run's problems) with the same verifier. The table gives pass@1 and maj@k with 95%
intervals, each arm's paired gain over the base model, and the compute the arm spent: teacher tokens
(the generation and journeys its data came from; few-shot: its own answers), training tokens (completion
tokens in the loss × epochs; GRPO: the rollouts it sampled) and wall time.

A rerun picks up where a run stopped: generation skips finished shards (and journeys already built),
a student whose training finished with the same settings and data is not retrained, and a model whose
weights on disk were evaluated on the same problems with the same settings is not evaluated again.
"""
import hashlib
import json
import shlex
import shutil
import sys
import time
from typing import Literal
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import field_validator

from distill.flows.generate import run_generate, run_id_for
from distill.generators import release_teachers
from distill.config import Config, key, read_config
from distill.flows.recipe import load_recipe
from distill.errors import ConfigError
from distill.generators.problems import load_problems


# Students of the embedded model on this CPU: short examples, full fine-tuning.
TRAIN_DEFAULTS = {"per_device_train_batch_size": 8, "learning_rate": 1e-4, "num_train_epochs": 3,
                  "max_length": 256, "logging_steps": 10, "save_steps": 1000}


STUDENTS = ("shortcut", "journey", "mixed", "journey-masked", "mixed-masked")
ARMS = ("base", "few-shot", *STUDENTS, "dpo", "dpo-shortcut", "grpo", "grpo-shortcut")

# DPO on the run's (right, wrong) pairs: one epoch, a learning rate for a 135M model (TRL's 1e-6 default is
# for billions of weights).
DPO_DEFAULTS = {"learning_rate": 1.0e-5, "num_train_epochs": 1, "dpo_beta": 0.1, "pairs_per_problem": 1}

# GRPO on this CPU: groups of 4, two problems a step, short completions (see recipes/rl-default.yaml).
RL_DEFAULTS = {"num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 64,
               "temperature": 0.7, "learning_rate": 1.0e-5, "max_steps": 40, "logging_steps": 5, "save_steps": 20}
# The generation recipe's problem keys the GRPO arms train on (the same problems the teacher was asked).
RL_PROBLEM_KEYS = ("dataset", "dataset_split", "dataset_config", "dataset_options", "question_field", "answer_field",
                   "answer_format", "domain", "limit", "verifier")


def data_variant(student: str) -> str:
    """The export variant a student trains on: a masked student shares its variant's rows."""
    return student.removesuffix("-masked")


class PipelineConfig(Config):
    """A pipeline recipe (flat YAML, every key optional)."""

    what = "pipeline"
    name: str = key("pipeline", "Name of the experiment.")
    generate: str = key("default.yaml", "Generation recipe (relative to this file's folder, or the working directory).")
    generate_set: dict = key(help="Overrides of the generation recipe's keys, e.g. {n: 8, journey: teacher}.",
                             factory=dict)
    journey: Literal["template", "teacher"] = key("teacher", "How journeys are built: template | teacher.",
                                                  expected="template or teacher")
    students: list = key(help="Students to train, by data variant: shortcut (correct paths), journey (journeys "
                              "only), mixed (both); journey-masked and mixed-masked train on the same rows with "
                              "the wrong paths out of the loss (journey_loss: masked).",
                         factory=lambda: ["shortcut", "mixed"])
    arms: list | None = key(None, "Arms to compare on the same held-out problems: " + ", ".join(ARMS) + ". None: "
                                  "base and `students`. An arm ending in -shortcut starts from the shortcut student "
                                  "(list shortcut too).")
    few_shot_n: int = key(8, "few-shot arm: samples per problem (pass@1 averages them, maj@k votes over all).",
                          expected="a whole number >= 1", ge=1)
    dpo: dict = key(help="Training keys of the DPO arms over `train` (defaults: " + ", ".join(
        f"{k} {v}" for k, v in DPO_DEFAULTS.items()) + ").", factory=dict)
    rl: dict = key(help="RL keys (the rl recipe reference) of the GRPO arms (defaults: " + ", ".join(
        f"{k} {v}" for k, v in RL_DEFAULTS.items()) + "); the problems are the generation run's, asked zero-shot "
        "as in the eval.", factory=dict)
    student: str | None = key(None, "Model the students start from (default: the teacher's base model, the "
                                    "generation recipe's model).")
    train: dict = key(help="Training keys (see the training recipe reference) shared by every student; keys not "
                           "given take these defaults.", factory=lambda: dict(TRAIN_DEFAULTS))
    eval_dataset: str = key("builtin:addition", "Held-out problems: a file, Hub id or built-in task. Problems the "
                                                "generation run used are removed.")
    eval_options: dict = key(help="Options of a built-in eval task.",
                             factory=lambda: {"count": 100, "digits": [2], "seed": 1})
    eval_question_field: str = key("question", "Question column of an eval file.")
    eval_answer_field: str = key("answer", "Answer column of an eval file.")
    eval_n: int = key(4, "Samples per eval problem (pass@1 is averaged; maj@n votes).",
                      expected="a whole number >= 1", ge=1)
    eval_max_tokens: int = key(128, "Most new tokens per eval sample.", expected="a whole number >= 1", ge=1)
    eval_temperature: int | float = key(0.6, "Eval sampling temperature.", expected="a number >= 0", ge=0)
    eval_backend: str = key("auto", "Eval backend: auto | vllm | transformers.")
    out_dir: str = key("./distill-pipeline", "Where exported data, students and the results table go.")

    @field_validator("students")
    @classmethod
    def _students(cls, v):
        if not v or any(s not in STUDENTS for s in v):
            raise ValueError("a list of " + ", ".join(STUDENTS))
        return v

    @field_validator("arms")
    @classmethod
    def _arms(cls, v):
        if v is None:
            return v
        if not v or any(a not in ARMS for a in v) or len(set(v)) != len(v):
            raise ValueError("a list of distinct arms among " + ", ".join(ARMS))
        if any(a.endswith("-shortcut") for a in v) and "shortcut" not in v:
            raise ValueError("a list that holds shortcut too (an arm ending in -shortcut starts from the shortcut student)")
        return v

    def arm_list(self) -> list[str]:
        """The arms in the table's order: base, few-shot, the SFT students, DPO, GRPO."""
        arms = self.arms if self.arms is not None else ["base", *self.students]
        return [a for a in ARMS if a in arms]


def load_pipeline(path: str | Path, overrides: dict | None = None) -> tuple[PipelineConfig, Path]:
    data = read_config(path, PipelineConfig.key_names(), overrides, what="pipeline recipe")
    return PipelineConfig.build(data), Path(path).parent


def _resolve(base_dir: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or not (base_dir / p).exists() else base_dir / p


@task(name="export", cache_policy=NO_CACHE)
def export_task(root: str, run_id: str, out: Path, variant: str) -> int:
    from distill.warehouse.export import export, is_export

    # The pipeline's own export from an earlier call is replaced; any other folder there is refused.
    res = export(root, out, runs=[run_id], variant=variant, command=f"distill pipeline (export {variant})",
                 overwrite=is_export(out))
    return sum(res.splits.values())


@task(name="train", cache_policy=NO_CACHE)
def train_task(settings: dict, start: str | None = None) -> dict:
    """Train one student, unless one with the same settings, data and starting weights finished already
    (`start`: the weights_key of a student it starts from)."""
    from distill.trainers.sft import TrainConfig, train

    data_hash = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(settings["data"]).glob("data/*.parquet"))))
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + data_hash.digest()
                         + (start or "").encode()).hexdigest()[:16]
    return _once(Path(settings["output_dir"]) / "distill-train.json", key, lambda: train(TrainConfig.build(settings)))


def _once(marker: Path, key: str, work, stale=None) -> dict:
    """The record `marker` holds when it was written for `key` (marked resumed); else `stale(marker)` when a record
    of another key is there, then `work()`, its result recorded with the key and its wall seconds (so a
    resumed arm reports its own)."""
    if marker.exists():
        record = json.loads(marker.read_text())
        if record.get("key") == key:
            return {**record, "resumed": True}
        if stale is not None:
            stale(marker)
    t0 = time.time()
    record = {**work(), "key": key, "wall": round(time.time() - t0, 1)}
    marker.write_text(json.dumps(record, indent=1, default=str))
    return record


@task(name="rl", cache_policy=NO_CACHE)
def rl_task(settings: dict, base_dir: Path, start: str | None = None) -> dict:
    """Run GRPO for one arm, unless a run with the same settings and starting weights finished already. A run
    stopped midway resumes from its last checkpoint (its rollouts of later steps are redone)."""
    from distill.trainers.rl import RLConfig, train_rl

    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode() + (start or "").encode()).hexdigest()[:16]

    def start_over(marker: Path) -> None:  # another start or other settings: not a run to continue
        for old in marker.parent.glob("checkpoint-*"):
            shutil.rmtree(old)
        marker.unlink()

    return _once(Path(settings["output_dir"]) / "distill-rl.json", key,
                 lambda: train_rl(RLConfig.build({**settings, "resume": True}), base_dir, "distill pipeline (rl)"),
                 start_over)


def weights_key(model: str) -> str:
    """The weights a model name stands for now: a hash of its files' names, sizes and times when it is a local
    folder or file (a retrained student has new files), else the name itself (a Hub id, an alias)."""
    from distill.generators.models import resolve_model

    path = Path(resolve_model(model))
    if not path.exists():
        return model
    files = sorted(f for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    stat = [(str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16]


@task(name="evaluate", cache_policy=NO_CACHE)
def eval_task(model: str, label: str, problems: list, cfg: PipelineConfig, warehouse: str,
              prompt: dict | None = None, n: int | None = None) -> dict:
    """Evaluate one model (zero-shot, or with `prompt`: {system_prompt, few_shot, prompt_template}; `n` samples
    a problem), unless the same weights were evaluated on the same problems with the same settings (the stored
    eval names its weights_key): a rerun's table then comes from the stored results."""
    from distill.trainers.evaluate import eval_id_for, evaluate, save
    from distill.warehouse.store import Warehouse

    benchmark, key = f"{cfg.name}-heldout", weights_key(model)
    n = n or cfg.eval_n
    settings = {"n": n, "k": n, "temperature": cfg.eval_temperature, "top_p": 0.95,
                "max_tokens": cfg.eval_max_tokens, "seed": 0, **(prompt or {})}
    eval_id = eval_id_for(model, benchmark, problems, **settings)
    wh = Warehouse(warehouse)
    stored = wh._read_json(f"evals/{eval_id}.json")
    if stored and stored.get("weights_key") == key:
        return {"label": label, **stored, "resumed": True}
    t0 = time.time()
    result = evaluate(model, benchmark, problems, backend=cfg.eval_backend, **settings)
    wall = round(time.time() - t0, 1)
    save(result, warehouse, {"weights_key": key, "wall": wall})
    return {"label": label, **result.__dict__, "wall": wall}


def seen_problems(wh, run_id: str, prompt_template: str = "{question}") -> tuple[set[str], set[str]]:
    """The questions (stripped) and problem ids a generation run's samples were made from.

    The `question` column holds the problem's own text. Rows written before it existed have only the
    rendered prompt, whose last message is the recipe's template applied to the question: the
    template's text around `{question}` is taken off again, so such rows are compared on the question too.
    """
    rows = wh.query("SELECT DISTINCT problem_id, question, prompt[len(prompt)].content FROM traces "
                    "WHERE run_id = ? AND kind = 'sample'", [run_id])[1]
    before, _, after = prompt_template.partition("{question}")
    questions, ids = set(), set()
    for pid, question, last in rows:
        if question is None and last is not None:
            question = last
            if len(last) >= len(before) + len(after) and last.startswith(before) and last.endswith(after):
                question = last[len(before):len(last) - len(after)]
        if question is not None:
            questions.add(question.strip())
        ids.add(pid)
    return questions, ids


def heldout_problems(cfg: PipelineConfig, base_dir: Path, seen_questions: set[str],
                     seen_ids: set[str] = frozenset()) -> tuple[list, int]:
    """The eval problems minus those generation used: same question text, or same problem id."""
    problems = load_problems(cfg.eval_dataset, question_field=cfg.eval_question_field,
                             answer_field=cfg.eval_answer_field, options=cfg.eval_options, base_dir=base_dir)
    kept = [p for p in problems if p.question.strip() not in seen_questions and p.problem_id not in seen_ids]
    if not kept:
        raise ConfigError(f"every eval problem of {cfg.eval_dataset} was used for generation: none is held out")
    return kept, len(problems) - len(kept)


@flow(name="pipeline")
def pipeline(cfg: PipelineConfig, base_dir: Path, command: str | None = None) -> dict:
    from distill.trainers.evaluate import paired_diff_ci
    from distill.warehouse.store import Warehouse

    started = time.time()
    timings: dict[str, float] = {}
    out = Path(cfg.out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)

    # 1. generate (with journeys) — resumes finished shards
    t0 = time.time()
    gen_path = _resolve(base_dir, cfg.generate)
    recipe = load_recipe(gen_path, {**cfg.generate_set, "journey": cfg.journey})
    run_id = run_id_for(recipe)
    run = run_generate(recipe, run_id, gen_path.parent, command)
    release_teachers()  # the engine's memory is for the students now
    timings["generate"] = time.time() - t0

    # 2. export each arm's data from this run
    t0 = time.time()
    wh = Warehouse(recipe.execution.warehouse)
    arms = cfg.arm_list()
    sft = [a for a in arms if a in STUDENTS]
    dpo = [a for a in arms if a.startswith("dpo")]
    grpo = [a for a in arms if a.startswith("grpo")]
    variants = list(dict.fromkeys([*map(data_variant, sft), *(["dpo"] if dpo else [])]))
    exported = {v: export_task(recipe.execution.warehouse, run_id, out / "data" / v, v) for v in variants}
    examples = {a: exported[data_variant(a)] for a in sft} | {a: exported["dpo"] for a in dpo}
    timings["export"] = time.time() - t0

    # 3. train: same base, same settings, different data (an arm ending in -shortcut starts from that student)
    student_base = cfg.student or recipe.teacher.model
    shortcut_dir = str(out / "students" / "shortcut")
    trained = {}
    for a in sft + dpo:
        t0 = time.time()
        settings = {**TRAIN_DEFAULTS, **cfg.train, "data": str(out / "data" / data_variant(a)), "model": student_base,
                    "output_dir": str(out / "students" / a)}
        if a.endswith("-masked"):
            settings["journey_loss"] = "masked"
        start = None
        if a in dpo:
            settings.update({**DPO_DEFAULTS, **cfg.dpo, "method": "dpo", "data": str(out / "data" / "dpo")})
            if a == "dpo-shortcut":
                settings["model"], start = shortcut_dir, weights_key(shortcut_dir)
        trained[a] = train_task(settings, start)
        timings[f"train_{a}"] = time.time() - t0
    if grpo:
        generation = recipe.to_dict()
        problem_keys = {k: generation[k] for k in RL_PROBLEM_KEYS if k in generation}
    for a in grpo:
        t0 = time.time()
        model = shortcut_dir if a == "grpo-shortcut" else student_base
        settings = {**RL_DEFAULTS, **cfg.rl, **problem_keys, "name": f"{cfg.name}-{a}", "model": model,
                    "output_dir": str(out / "students" / a), "warehouse": recipe.execution.warehouse}
        trained[a] = rl_task(settings, gen_path.parent, weights_key(model) if a == "grpo-shortcut" else None)
        timings[f"train_{a}"] = time.time() - t0

    # 4. evaluate on held-out problems: every model zero-shot, the few-shot teacher with its own prompt
    t0 = time.time()
    # compared on the problem's own text (and id), not the rendered prompt: a template changes the prompt
    problems, dropped = heldout_problems(cfg, base_dir, *seen_problems(wh, run_id, recipe.prompt.prompt_template))
    results = []
    for a in arms:
        if a == "base":
            results.append(eval_task(student_base, a, problems, cfg, recipe.execution.warehouse))
        elif a == "few-shot":
            prompt = {"system_prompt": recipe.prompt.system_prompt, "few_shot": recipe.prompt.few_shot,
                      "prompt_template": recipe.prompt.prompt_template}
            results.append(eval_task(recipe.teacher.model, a, problems, cfg, recipe.execution.warehouse, prompt,
                                     cfg.few_shot_n))
        else:
            results.append(eval_task(str(out / "students" / a), a, problems, cfg, recipe.execution.warehouse))
    wh.refresh()
    timings["evaluate"] = time.time() - t0

    base = next((r for r in results if r["label"] == "base"), None)
    if base is not None:
        base_p1 = [r["correct"] / r["samples"] for r in base["per_problem"]]
        for r in results:
            if r is not base:
                p1 = [x["correct"] / x["samples"] for x in r["per_problem"]]
                r["gain"], r["gain_ci"] = paired_diff_ci(base_p1, p1)
    funnel = _funnel(wh, run_id)
    compute = arm_compute(arms, trained, results, funnel, run)
    timings["total"] = time.time() - started
    summary = {
        "name": cfg.name, "run_id": run_id, "status": run["status"], "command": command,
        "generation": funnel, "journeys": run.get("journeys", {}),
        "examples": examples,
        "training": {a: {k: trained[a].get(k) for k in ("global_step", "losses", "examples", "loss_tokens",
                                                        "rollout_tokens", "rewards", "run_id", "wall",
                                                        "problems")}
                     for a in trained},
        "compute": compute,
        "heldout": {"dataset": cfg.eval_dataset, "options": cfg.eval_options, "problems": len(problems),
                    "removed_as_seen": dropped, "n": cfg.eval_n},
        "results": [{k: r.get(k) for k in ("label", "model", "eval_id", "problems", "n", "k", "pass_at_1",
                                           "pass_at_1_ci", "maj_at_k", "maj_at_k_ci", "boxed_rate", "strict_pass_at_1",
                                           "strict_pass_at_1_ci", "gain", "gain_ci", "completion_tokens")}
                    for r in results],
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=list))
    md = results_markdown(summary)
    (out / "results.md").write_text(md)
    create_markdown_artifact(markdown=md, key=("pipeline-" + "".join(c if c.isalnum() else "-"
                                                                     for c in cfg.name.lower()))[:100],
                             description=f"distill pipeline {cfg.name}")
    return summary


def arm_compute(arms: list[str], trained: dict, results: list[dict], funnel: dict, run: dict) -> dict:
    """What each arm spent: teacher tokens (the generation run's samples its data came from, and the journeys' for
    journey data; few-shot: the tokens of its own answers), training tokens (completion tokens in the loss × epochs;
    GRPO: the rollouts it sampled; an arm started from the shortcut student adds that student's) and wall seconds
    (the generation and journeys behind its data, its training and the training it started from; few-shot: its
    answers). None where a part was not recorded (a student trained by an older distill)."""
    timings = run.get("timings") or {}
    journeys = (run.get("journeys") or {}).values()
    samples = {"tokens": funnel.get("completion_tokens") or 0, "wall": timings.get("generate")}
    jour = {"tokens": sum(j.get("completion_tokens") or 0 for j in journeys),
            "wall": sum(j.get("seconds") or 0 for j in journeys)}
    by_label = {r["label"]: r for r in results}

    def add(*xs):
        return None if any(x is None for x in xs) else round(sum(xs), 1)

    def own(a: str) -> tuple:
        t = trained[a]
        return t.get("loss_tokens", t.get("rollout_tokens")), t.get("wall")

    out = {}
    for a in arms:
        if a == "base":
            out[a] = {"teacher_tokens": 0, "training_tokens": 0, "wall": 0.0}
        elif a == "few-shot":
            r = by_label[a]
            out[a] = {"teacher_tokens": r.get("completion_tokens"), "training_tokens": 0, "wall": r.get("wall")}
        elif a == "grpo":
            tokens, wall = own(a)
            out[a] = {"teacher_tokens": 0, "training_tokens": tokens, "wall": wall}
        else:
            teacher = dict(samples)
            if data_variant(a) in ("journey", "mixed"):
                teacher = {"tokens": teacher["tokens"] + jour["tokens"], "wall": add(teacher["wall"], jour["wall"])}
            tokens, wall = own(a)
            if a.endswith("-shortcut"):
                base_tokens, base_wall = own("shortcut")
                tokens, wall = add(tokens, base_tokens), add(wall, base_wall)
            out[a] = {"teacher_tokens": teacher["tokens"], "training_tokens": None if tokens is None else int(tokens),
                      "wall": add(teacher["wall"], wall)}
    return out


def _funnel(wh, run_id: str) -> dict:
    cols, rows = wh.query("SELECT problems, samples, correct, kept, completion_tokens FROM funnel WHERE run_id = ?",
                          [run_id])
    return dict(zip(cols, rows[0])) if rows else {}


ARM_DATA = {"base": "—", "few-shot": "— (the teacher's prompt, {n} samples voted)",
            "dpo": "{examples} (right, wrong) pairs", "dpo-shortcut": "shortcut, then {examples} pairs",
            "grpo": "{problems} problems, verifier reward", "grpo-shortcut": "shortcut, then verifier reward"}


def _tokens(x) -> str:
    if x is None:
        return "—"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x / 1e3:.1f}k" if x >= 1e3 else str(x)


def results_markdown(s: dict) -> str:
    g, h = s["generation"], s["heldout"]
    compute = s.get("compute") or {}
    lines = [
        f"Held-out: {h['problems']} problems of `{h['dataset']}` {json.dumps(h['options'])} "
        f"({h['removed_as_seen']} removed as seen in generation), strict verifier.",
        f"Generation run `{s['run_id']}`: {g.get('problems')} problems → {g.get('samples')} samples → "
        f"{g.get('correct')} correct → {g.get('kept')} kept.",
        "",
        "| arm | trained on | n | pass@1 (95% CI) | maj@n (95% CI) | boxed | strict pass@1: right and boxed (95% CI) "
        "| pass@1 gain vs base (95% CI, paired) | teacher tokens | training tokens | wall (s) |",
        "|---|---|---:|---|---|---:|---|---|---:|---:|---:|",
    ]
    for r in s["results"]:
        label = r["label"]
        training = (s.get("training") or {}).get(label) or {}
        if label in ARM_DATA:
            trained = ARM_DATA[label].format(n=r["n"], examples=s["examples"].get(label),
                                             problems=training.get("problems", "the run's"))
        else:
            trained = f"{s['examples'][label]} {label} examples"
        gain = "—" if r.get("gain") is None else f"{r['gain']:+.3f} ({r['gain_ci'][0]:+.3f} to {r['gain_ci'][1]:+.3f})"
        c = compute.get(label) or {}
        wall = "—" if c.get("wall") is None else f"{c['wall']:.0f}"
        lines.append(f"| {label} | {trained} | {r['n']} "
                     f"| {r['pass_at_1']:.3f} ({r['pass_at_1_ci'][0]:.3f}–{r['pass_at_1_ci'][1]:.3f}) "
                     f"| {r['maj_at_k']:.3f} ({r['maj_at_k_ci'][0]:.3f}–{r['maj_at_k_ci'][1]:.3f}) "
                     f"| {r['boxed_rate']:.2f} | {r['strict_pass_at_1']:.3f} ({r['strict_pass_at_1_ci'][0]:.3f}–"
                     f"{r['strict_pass_at_1_ci'][1]:.3f}) | {gain} | {_tokens(c.get('teacher_tokens'))} "
                     f"| {_tokens(c.get('training_tokens'))} | {wall} |")
    t = s["timings"]
    lines += ["", "Teacher tokens: the generation (and journeys) an arm's data came from, or the few-shot arm's own "
                  "answers. Training tokens: completion tokens in the loss × epochs (GRPO: the rollouts it sampled). "
                  "Wall: those, plus the arm's training (and the student it started from).",
              "", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def run_pipeline(path: str | Path, overrides: dict | None = None) -> dict:
    cfg, base_dir = load_pipeline(path, overrides)
    return pipeline(cfg, base_dir.absolute(), shlex.join(["distill", *sys.argv[1:]]))
