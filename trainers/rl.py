"""RL on verifiable rewards (`distill rl RECIPE`): TRL's GRPOTrainer with distill's verifiers as rewards.

Each step samples `num_generations` completions per problem from the policy, scores every completion with
the rewards named in `reward_weights` and takes a GRPO step on their weighted sum:
- accuracy: the recipe's verifier — 1 right, 0 wrong, None when it cannot check (a reference or answer that
  does not parse): no signal, as TRL's accuracy_reward returns None, never counted as wrong;
- format: R1's `<think>…</think> answer` (verifiers/format.py), 1 or 0;
- language: R1's language consistency, the share of the reasoning in the target language (filters/language.py).
It starts from a base model (R1-Zero: `model: smollm2-135m`) or an SFT student's folder (R1).

Every rollout is a warehouse row of kind = 'rollout' in the run `rl-<name>-<fingerprint>`, one part file per
training step (`part-<step>.parquet`; `scores` holds `step`, the weighted `reward` and each `reward_<name>`),
written when the step ends and before its checkpoint. A resumed run trains again from the last checkpoint and
rewrites the parts of the steps after it, so a step's rows are the rollouts that trained the weights, once.
The `rollout_steps` view is the reward curve.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from pydantic import field_validator

from distill.config import Config, key, read_config
from distill.errors import ConfigError
from distill.filters.language import LanguageConsistency
from distill.generators.base import build_messages
from distill.generators.problems import Problem, load_problems
from distill.verifiers import VERIFIERS, Verdict, verify_batch
from distill.verifiers.format import verify as verify_format
from distill.warehouse.pass_rates import select_by_pass_rate
from distill.warehouse.schema import Trace, make_trace_id, sampling_json, split_think
from distill.warehouse.store import Warehouse

Number = int | float


# -- rewards: plain functions in TRL's reward_funcs signature --------------------------------------------
def completion_text(completion) -> str:
    """A completion as TRL passes it: the text, or (conversational prompts) [{role: assistant, content}]."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def verdicts(completions: list, reference: list[str], verifier: str = "math") -> list[Verdict]:
    return verify_batch(verifier, [(completion_text(c), r) for c, r in zip(completions, reference)])


def accuracy(prompts: list, completions: list, reference: list[str], verifier: str = "math",
             **kwargs) -> list[float | None]:
    """1.0 when the verifier says right, 0.0 wrong, None when it cannot tell (no signal)."""
    return [as_reward(v) for v in verdicts(completions, reference, verifier)]


def as_reward(verdict: Verdict) -> float | None:
    return None if verdict.correct is None else float(verdict.correct)


def format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 for one closed `<think>` block with reasoning, then an answer; else 0.0."""
    return [float(bool(verify_format(completion_text(c)).correct)) for c in completions]


@lru_cache(maxsize=4)
def _language_filter(target: str) -> LanguageConsistency:
    return LanguageConsistency(target=target)


def language(prompts: list, completions: list, target: str = "en", **kwargs) -> list[float]:
    """Share of the reasoning (inside `<think>`, else the whole completion) in the target language."""
    f = _language_filter(target)
    return [f.share(split_think(completion_text(c))[0] or completion_text(c)) for c in completions]


REWARDS = {"accuracy": accuracy, "format": format_reward, "language": language}


# -- the recipe ---------------------------------------------------------------------------------------------
class RLConfig(Config):
    """An RL recipe (flat YAML, every key optional)."""

    what = "rl"
    name: str = key("rl", "Names the run: rl-<name>-<fingerprint of the keys that change training>.")
    dataset: str = key("builtin:addition", "Problems: a local .jsonl/.json/.parquet/.csv file (relative to the "
                                           "recipe's folder or the working directory), a Hugging Face dataset id, "
                                           "or builtin:addition.")
    dataset_split: str = key("train", "Split of a Hub dataset (or key of a JSON file).")
    dataset_config: str | None = key(None, "Config name of a Hub dataset.")
    dataset_options: dict = key(help="Options of a built-in task, e.g. {count: 40, digits: [1, 2], seed: 0}.",
                                factory=dict, expected="a mapping")
    question_field: str = key("question", "Column holding the problem text.")
    answer_field: str = key("answer", "Column holding the reference answer.")
    answer_format: str = key("auto", "auto | gsm8k | raw, as in a generation recipe.")
    domain: str = key("math", "Domain label stored on every rollout.")
    limit: int | None = key(None, "Use only the first N problems.", expected="a whole number >= 1", ge=1)
    pass_rate_from: str | None = key(None, "Train only on problems whose pass rate in this stored run is within "
                                           "pass_rate_min..pass_rate_max (open-r1: 0.1-0.6); problems it never "
                                           "sampled are left out.")
    pass_rate_min: Number = key(0.1, "pass_rate_from: lowest pass rate kept.", expected="a number in [0, 1]",
                                ge=0, le=1)
    pass_rate_max: Number = key(0.6, "pass_rate_from: highest pass rate kept.", expected="a number in [0, 1]",
                                ge=0, le=1)
    system_prompt: str | None = key(None, "System message of every prompt.")
    few_shot: list = key(help="Example turns shown before each problem: a list of {question, answer}.", factory=list)
    prompt_template: str = key("{question}", "User message; {question} is replaced.")
    verifier: str = key("math", "Verifier behind the accuracy reward: math, code, countdown or format.")
    reward_weights: dict = key(help="Rewards and their weights, summed into the reward GRPO maximises: accuracy "
                                    "(the verifier; None when it cannot check), format (<think>…</think> answer), "
                                    "language (share of the reasoning in `language`).",
                               factory=lambda: {"accuracy": 1.0, "format": 0.5, "language": 0.1},
                               expected="a mapping of accuracy, format or language to a number")
    language: str = key("en", "Target language of the language reward (ISO 639-1).")
    model: str = key("smollm2-135m", "Policy to start from: a base model (alias, path or Hub id; R1-Zero) or an SFT "
                                     "student's folder (R1).")
    output_dir: str = key("./distill-students/rl", "Where checkpoints and the trained model go.")
    per_device_train_batch_size: int = key(8, "Completions per batch (prompts × num_generations).",
                                           expected="a whole number >= 1", ge=1)
    gradient_accumulation_steps: int = key(1, "Batches per optimizer step.", expected="a whole number >= 1", ge=1)
    num_generations: int = key(8, "Completions per prompt (GRPO's group); divides the batches of a step.",
                               expected="a whole number >= 2 that divides per_device_train_batch_size × "
                                        "gradient_accumulation_steps", ge=2)
    max_completion_length: int = key(256, "Most new tokens per completion.", expected="a whole number >= 1", ge=1)
    temperature: Number = key(0.7, "Sampling temperature of the rollouts.", expected="a number > 0", gt=0)
    top_p: Number = key(0.95, "Nucleus sampling of the rollouts.", expected="a number in (0, 1]", gt=0, le=1)
    beta: Number = key(0.0, "KL coefficient against the starting model (0: no reference model, as TRL).",
                       expected="a number >= 0", ge=0)
    learning_rate: Number = key(1.0e-6, "Peak learning rate.", expected="a number")
    num_train_epochs: Number = key(1.0, "Epochs over the problems.", expected="a number")
    max_steps: int = key(-1, "Stop after this many optimizer steps (-1: epochs decide).")
    warmup_steps: Number = key(0, "Warm-up steps (a number < 1 is a share of all steps).", expected="a number")
    logging_steps: int = key(1, "Log rewards every N steps.", expected="a whole number >= 1", ge=1)
    save_steps: int = key(50, "Checkpoint every N steps.", expected="a whole number >= 1", ge=1)
    resume: bool = key(False, "Continue from the latest checkpoint in output_dir.")
    seed: int = key(0, "Seed for problem order, sampling and initialisation.")
    warehouse: str = key("./distill-data", "Warehouse the rollouts and the run record go to.")

    @field_validator("learning_rate", "num_train_epochs", "warmup_steps", "temperature", "top_p", "beta",
                     mode="before")
    @classmethod
    def _yaml_number(cls, v):
        if isinstance(v, str):  # YAML reads 1e-5 (no dot) as a string: say so here, not deep inside the trainer
            raise ValueError("a number (write 1.0e-5: YAML reads 1e-5 as text)")
        return v

    @field_validator("num_generations")
    @classmethod
    def _group_fits(cls, v, info):
        batch = info.data.get("per_device_train_batch_size", 1) * info.data.get("gradient_accumulation_steps", 1)
        if batch % v:
            raise ValueError(f"a whole number >= 2 that divides per_device_train_batch_size × "
                             f"gradient_accumulation_steps ({batch})")
        return v

    @field_validator("verifier")
    @classmethod
    def _verifier(cls, v):
        rules = sorted(n for n in VERIFIERS if n != "judge")  # a judge needs a server per batch: no reward here
        if v not in rules:
            raise ValueError(f"one of {', '.join(rules)} (rule-based verifiers; an LLM judge is not an RL reward here)")
        return v

    @field_validator("reward_weights")
    @classmethod
    def _weights(cls, v):
        if not v or any(k not in REWARDS or isinstance(w, bool) or not isinstance(w, (int, float))
                        for k, w in v.items()):
            raise ValueError(f"a mapping of {', '.join(REWARDS)} to a number")
        return v

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, v):
        if any(not isinstance(s, dict) or set(s) != {"question", "answer"} for s in v):
            raise ValueError("a list of {question: ..., answer: ...}")
        return v


# Keys that say how and how long a run runs, not what it learns: changing them keeps the run id (resume).
EXECUTION_KEYS = {"max_steps", "logging_steps", "save_steps", "resume", "warehouse"}


def load_rl_config(path: str | Path, overrides: dict | None = None) -> RLConfig:
    return RLConfig.build(read_config(path, RLConfig.key_names(), overrides, what="rl recipe"))


def run_id(cfg: RLConfig) -> str:
    identity = {k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_KEYS}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"rl-{cfg.name}-{digest}"


def load_rl_problems(cfg: RLConfig, wh: Warehouse, base_dir: Path | None = None) -> tuple[list[Problem], dict]:
    """The recipe's problems, restricted to the pass-rate band of `pass_rate_from` when it is set."""
    problems = load_problems(cfg.dataset, split=cfg.dataset_split, config=cfg.dataset_config,
                             question_field=cfg.question_field, answer_field=cfg.answer_field,
                             answer_format=cfg.answer_format, domain=cfg.domain, options=cfg.dataset_options,
                             limit=cfg.limit, base_dir=base_dir)
    if not cfg.pass_rate_from:
        return problems, {}
    keep, skipped = select_by_pass_rate(wh, problems, cfg.pass_rate_from, cfg.pass_rate_min, cfg.pass_rate_max)
    if not keep:
        raise ConfigError(f"pass_rate_from {cfg.pass_rate_from}: no problem has a pass rate in "
                          f"[{cfg.pass_rate_min}, {cfg.pass_rate_max}] ({skipped['pass_rate']} out of the band, "
                          f"{skipped['not_in_run']} never sampled)")
    return keep, {"pass_rate_from": cfg.pass_rate_from, "problems_skipped": skipped}


def prompt_rows(cfg: RLConfig, problems: list[Problem]) -> list[dict]:
    """TRL's conversational prompt shape; the other columns reach the reward functions as keyword lists."""
    return [{"prompt": build_messages(p.question, cfg.system_prompt, cfg.few_shot, cfg.prompt_template),
             "problem_id": p.problem_id, "reference": p.reference, "question": p.question, "source": p.source,
             "domain": p.domain} for p in problems]


# -- rollouts: scored once, logged by TRL, stored as rows when their step ends ------------------------------
class Rollouts:
    """The reward functions GRPOTrainer calls, and the rows of the rollouts they scored.

    TRL calls each reward function once per generation batch, in order, before the optimizer step that uses
    the batch; `trainer_state.global_step` is then the number of steps done, so the batch trains step + 1.
    `flush(step)` writes the rows of every step up to `step` (called when a step ends).
    """

    def __init__(self, cfg: RLConfig, wh: Warehouse, run: str, eos_token_id: int | None):
        self.cfg, self.wh, self.run, self.eos = cfg, wh, run, eos_token_id
        self.names = list(cfg.reward_weights)
        self.pending: dict[int, dict] = {}  # step -> {"batch": kwargs of the first call, name: rewards}
        self.sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_completion_length,
                         "seed": cfg.seed}

    def reward_funcs(self) -> list:
        funcs = []
        for name in self.names:
            def func(prompts, completions, completion_ids=None, trainer_state=None, _name=name, **kwargs):
                return self.score(_name, prompts, completions, completion_ids, trainer_state, kwargs)
            func.__name__ = name  # TRL logs rewards/<name>/mean
            funcs.append(func)
        return funcs

    def score(self, name: str, prompts, completions, completion_ids, state, kwargs) -> list[float | None]:
        step = (state.global_step if state is not None else 0) + 1
        entry = self.pending.setdefault(step, {})
        if name == self.names[0] or "batch" not in entry:  # the first reward of a batch starts it
            entry.clear()
            entry["batch"] = {"prompts": prompts, "completions": [completion_text(c) for c in completions],
                              "ids": completion_ids, **kwargs}
        if name == "accuracy":
            entry["verdicts"] = verdicts(completions, kwargs["reference"], self.cfg.verifier)
            rewards = [as_reward(v) for v in entry["verdicts"]]
        elif name == "language":
            rewards = language(prompts, completions, target=self.cfg.language)
        else:
            rewards = REWARDS[name](prompts, completions, **kwargs)
        entry[name] = rewards
        return rewards

    def flush(self, done: int) -> None:
        for step in sorted(s for s in self.pending if s <= done):
            entry = self.pending.pop(step)
            self.wh.write_part(self.run, step, self.rows(step, entry))

    def rows(self, step: int, entry: dict) -> list[Trace]:
        b = entry["batch"]
        sampling = {**self.sampling, "rl_run": self.run, "step": step}
        out = []
        for i, text in enumerate(b["completions"]):
            rewards = {n: entry[n][i] for n in self.names if n in entry}
            given = [self.cfg.reward_weights[n] * r for n, r in rewards.items() if r is not None]
            ids = b["ids"][i] if b.get("ids") is not None else []
            cut = len(ids) >= self.cfg.max_completion_length and (not ids or ids[-1] != self.eos)
            verdict = entry["verdicts"][i] if "verdicts" in entry else None
            reasoning, answer = split_think(text)
            prompt = [{"role": m["role"], "content": m["content"]} for m in b["prompts"][i]]
            out.append(Trace(
                trace_id=make_trace_id(prompt, self.cfg.model, sampling, i), run_id=self.run,
                problem_id=b["problem_id"][i], sample_index=i, source=b["source"][i], domain=b["domain"][i],
                prompt=prompt, question=b["question"][i], reference=b["reference"][i], teacher=self.cfg.model,
                backend="trl-grpo", sampling=sampling_json(sampling), completion=text, reasoning=reasoning,
                answer=answer, finish_reason="length" if cut else "stop", completion_tokens=len(ids),
                kind="rollout", correct=verdict.correct if verdict else None,
                verifier=self.cfg.verifier if verdict else None, verdict_reason=verdict.reason if verdict else None,
                extracted_answer=verdict.extracted if verdict else None,
                scores={"step": float(step), "reward": sum(given) if given else None,
                        **{f"reward_{n}": r for n, r in rewards.items()}}))
        return out


def stored_steps(wh: Warehouse, run: str) -> list[int]:
    return sorted(int(r.rsplit("/", 1)[1][len("part-"):-len(".parquet")])
                  for r in wh.storage.list(f"traces/run_id={run}", "part-*.parquet"))


def last_checkpoint(output_dir: str) -> int:
    steps = [int(p.name.split("-")[1]) for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("distill", "torch", "transformers", "trl"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def train_rl(cfg: RLConfig, base_dir: Path | None = None, command: str | None = None) -> dict:
    """Run GRPO; returns {run_id, output_dir, global_step, resumed_from, rewards (per logged step), problems}."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("distill rl runs in one process (each process would write the same step's rollouts)")
    wh = Warehouse(cfg.warehouse)
    problems, selected = load_rl_problems(cfg, wh, base_dir)
    run = run_id(cfg)
    start = last_checkpoint(cfg.output_dir) if cfg.resume else 0
    stored = stored_steps(wh, run)
    if stored and not cfg.resume:
        raise ConfigError(f"run {run} already holds rollouts of steps 1-{stored[-1]} in {wh.root}: --set resume=true "
                          f"continues it from its last checkpoint in {cfg.output_dir}; another name starts a new run")
    for step in stored:  # rollouts of steps after the checkpoint never trained the weights we resume: redone
        if step > start:
            wh.storage.delete(f"traces/run_id={run}/part-{step:05d}.parquet")

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from distill.generators.models import resolve_model

    gpu = torch.cuda.is_available()
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rollouts = Rollouts(cfg, wh, run, tokenizer.eos_token_id)
    args = GRPOConfig(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
        beta=cfg.beta, reward_weights=[float(cfg.reward_weights[n]) for n in rollouts.names],
        warmup_steps=cfg.warmup_steps, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_strategy="steps", save_total_limit=2, seed=cfg.seed, report_to=[], dataloader_num_workers=0,
        use_vllm=False, disable_tqdm=not sys.stderr.isatty(),
        bf16=gpu, use_cpu=not gpu, model_init_kwargs={"dtype": "bfloat16" if gpu else "float32"},
    )

    class StoreRollouts(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            rollouts.flush(state.global_step)  # before the step's checkpoint is saved

    previous = wh.read_run(run) or {}
    call = {"started_at": datetime.now(timezone.utc).isoformat(), "from_step": start, "status": "running"}
    record = {"run_id": run, "kind": "rl", "recipe_name": cfg.name, "recipe": cfg.to_dict(),
              "command": command or shlex.join(sys.argv), "status": "running",
              "started_at": previous.get("started_at") or call["started_at"], "finished_at": None,
              "backend": "trl-grpo", "teacher": cfg.model, "versions": _versions(), "output_dir": cfg.output_dir,
              "problems": len(problems), **selected, "calls": [*(previous.get("calls") or []), call],
              "timings": previous.get("timings") or {}, "error": None}
    wh.write_run(record)
    wh.refresh()
    t0 = time.monotonic()
    try:
        trainer = GRPOTrainer(model=model_path, reward_funcs=rollouts.reward_funcs(), args=args,
                              train_dataset=Dataset.from_list(prompt_rows(cfg, problems)), processing_class=tokenizer,
                              callbacks=[StoreRollouts()])
        trainer.train(resume_from_checkpoint=True if start else None)
        trainer.save_model(cfg.output_dir)
        tokenizer.save_pretrained(cfg.output_dir)
    except BaseException as e:
        call.update(status="failed", finished_at=datetime.now(timezone.utc).isoformat())
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:500], finished_at=call["finished_at"])
        raise
    else:
        call.update(status="finished", finished_at=datetime.now(timezone.utc).isoformat(),
                    to_step=trainer.state.global_step)
        record.update(status="finished", finished_at=call["finished_at"], global_step=trainer.state.global_step)
    finally:
        wall = time.monotonic() - t0
        call["wall"] = round(wall, 2)
        record["timings"] = {"wall": (record["timings"].get("wall") or 0.0) + wall}
        wh.write_run(record)
        wh.refresh()
    logged = [{"step": h["step"], "reward": h.get("reward"),
               **{n: h.get(f"rewards/{n}/mean") for n in rollouts.names},
               "completion_length": h.get("completions/mean_length")}
              for h in trainer.state.log_history if "reward" in h]
    # the policy's own sampling, every step's completions: the tokens GRPO trained on (loss_tokens of SFT's count)
    (tokens,), = wh.query("SELECT coalesce(sum(completion_tokens), 0) FROM traces WHERE run_id = ? AND kind = 'rollout'",
                          [run])[1]
    return {"run_id": run, "output_dir": cfg.output_dir, "global_step": trainer.state.global_step,
            "resumed_from": start, "rewards": logged, "problems": len(problems), "warehouse": str(wh.root),
            "rollout_tokens": int(tokens)}
