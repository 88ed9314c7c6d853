"""`distill pipeline RECIPE`: generate → journeys → export → train students → evaluate, as one Prefect flow.

It answers the question a user of distillation asks first: did the students get better? The base
model, a student trained on correct paths only (shortcut) and one trained on journeys are evaluated
on held-out problems (none of the generation run's problems) with the same verifier, and the table
gives pass@1 and maj@k with 95% intervals and each student's paired gain over the base model.

A rerun picks up where a run stopped: generation skips finished shards (and journeys already built),
a student whose training finished with the same settings and data is not retrained, and a model whose
weights on disk were evaluated on the same problems with the same settings is not evaluated again.
"""
import hashlib
import json
import shlex
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
def train_task(settings: dict) -> dict:
    """Train one student, unless one with the same settings and data finished already."""
    from distill.trainers.sft import TrainConfig, train

    out = Path(settings["output_dir"])
    data_hash = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(settings["data"]).glob("data/*.parquet"))))
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + data_hash.digest()).hexdigest()[:16]
    marker = out / "distill-train.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return {**json.loads(marker.read_text()), "resumed": True}
    t0 = time.time()
    result = train(TrainConfig.build(settings))
    record = {**result, "key": key, "wall": round(time.time() - t0, 1)}  # a resumed student reports its own
    marker.write_text(json.dumps(record, indent=1))
    return record


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
def eval_task(model: str, label: str, problems: list, cfg: PipelineConfig, warehouse: str) -> dict:
    """Evaluate one model, unless the same weights were evaluated on the same problems with the same settings
    (the stored eval names its weights_key): a rerun's table then comes from the stored results."""
    from distill.trainers.evaluate import eval_id_for, evaluate, save
    from distill.warehouse.store import Warehouse

    benchmark, key = f"{cfg.name}-heldout", weights_key(model)
    settings = {"n": cfg.eval_n, "k": cfg.eval_n, "temperature": cfg.eval_temperature, "top_p": 0.95,
                "max_tokens": cfg.eval_max_tokens, "seed": 0}
    eval_id = eval_id_for(model, benchmark, problems, **settings)
    wh = Warehouse(warehouse)
    stored = wh._read_json(f"evals/{eval_id}.json")
    if stored and stored.get("weights_key") == key:
        return {"label": label, **stored, "resumed": True}
    result = evaluate(model, benchmark, problems, backend=cfg.eval_backend, **settings)
    save(result, warehouse, {"weights_key": key})
    return {"label": label, **result.__dict__}


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

    # 2. export each student's data from this run
    t0 = time.time()
    wh = Warehouse(recipe.execution.warehouse)
    exported = {v: export_task(recipe.execution.warehouse, run_id, out / "data" / v, v)
                for v in dict.fromkeys(map(data_variant, cfg.students))}
    examples = {v: exported[data_variant(v)] for v in cfg.students}
    timings["export"] = time.time() - t0

    # 3. train: same base, same settings, different data
    student_base = cfg.student or recipe.teacher.model
    trained = {}
    for v in cfg.students:
        t0 = time.time()
        settings = {**TRAIN_DEFAULTS, **cfg.train, "data": str(out / "data" / data_variant(v)), "model": student_base,
                    "output_dir": str(out / "students" / v)}
        if v.endswith("-masked"):
            settings["journey_loss"] = "masked"
        trained[v] = train_task(settings)
        timings[f"train_{v}"] = time.time() - t0

    # 4. evaluate on held-out problems: the base model zero-shot, then each student zero-shot
    t0 = time.time()
    # compared on the problem's own text (and id), not the rendered prompt: a template changes the prompt
    problems, dropped = heldout_problems(cfg, base_dir, *seen_problems(wh, run_id, recipe.prompt.prompt_template))
    models = [("base", student_base)] + [(v, str(out / "students" / v)) for v in cfg.students]
    results = [eval_task(m, label, problems, cfg, recipe.execution.warehouse) for label, m in models]
    wh.refresh()
    timings["evaluate"] = time.time() - t0

    base = results[0]
    base_p1 = [r["correct"] / r["samples"] for r in base["per_problem"]]
    for r in results[1:]:
        p1 = [x["correct"] / x["samples"] for x in r["per_problem"]]
        r["gain"], r["gain_ci"] = paired_diff_ci(base_p1, p1)
    timings["total"] = time.time() - started
    summary = {
        "name": cfg.name, "run_id": run_id, "status": run["status"], "command": command,
        "generation": _funnel(wh, run_id), "journeys": run.get("journeys", {}),
        "examples": examples, "training": {v: {k: trained[v].get(k) for k in ("global_step", "losses", "examples")}
                                           for v in cfg.students},
        "heldout": {"dataset": cfg.eval_dataset, "options": cfg.eval_options, "problems": len(problems),
                    "removed_as_seen": dropped, "n": cfg.eval_n},
        "results": [{k: r.get(k) for k in ("label", "model", "eval_id", "problems", "n", "k", "pass_at_1",
                                           "pass_at_1_ci", "maj_at_k", "maj_at_k_ci", "boxed_rate", "strict_pass_at_1",
                                           "strict_pass_at_1_ci", "gain", "gain_ci")}
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


def _funnel(wh, run_id: str) -> dict:
    cols, rows = wh.query("SELECT problems, samples, correct, kept, completion_tokens FROM funnel WHERE run_id = ?",
                          [run_id])
    return dict(zip(cols, rows[0])) if rows else {}


def results_markdown(s: dict) -> str:
    g, h = s["generation"], s["heldout"]
    lines = [
        f"Held-out: {h['problems']} problems of `{h['dataset']}` {json.dumps(h['options'])} "
        f"({h['removed_as_seen']} removed as seen in generation), {h['n']} samples each, strict verifier.",
        f"Generation run `{s['run_id']}`: {g.get('problems')} problems → {g.get('samples')} samples → "
        f"{g.get('correct')} correct → {g.get('kept')} kept.",
        "",
        "| model | trained on | pass@1 (95% CI) | maj@{k} (95% CI) | boxed | strict pass@1: right and boxed (95% CI) "
        "| pass@1 gain vs base (95% CI) |".format(k=s["results"][0]["k"]),
        "|---|---|---|---|---:|---|---|",
    ]
    for r in s["results"]:
        label = r["label"]
        trained = "—" if label == "base" else f"{s['examples'][label]} {label} examples"
        gain = "—" if r.get("gain") is None else f"{r['gain']:+.3f} ({r['gain_ci'][0]:+.3f} to {r['gain_ci'][1]:+.3f})"
        lines.append(f"| {label} | {trained} | {r['pass_at_1']:.3f} ({r['pass_at_1_ci'][0]:.3f}–{r['pass_at_1_ci'][1]:.3f}) "
                     f"| {r['maj_at_k']:.3f} ({r['maj_at_k_ci'][0]:.3f}–{r['maj_at_k_ci'][1]:.3f}) "
                     f"| {r['boxed_rate']:.2f} | {r['strict_pass_at_1']:.3f} ({r['strict_pass_at_1_ci'][0]:.3f}–"
                     f"{r['strict_pass_at_1_ci'][1]:.3f}) | {gain} |")
    t = s["timings"]
    lines += ["", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def run_pipeline(path: str | Path, overrides: dict | None = None) -> dict:
    cfg, base_dir = load_pipeline(path, overrides)
    return pipeline(cfg, base_dir.absolute(), shlex.join(["distill", *sys.argv[1:]]))
