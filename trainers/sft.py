"""Training a student with TRL: SFT on distilled traces, DPO on right/wrong pairs, on-policy distillation.

`method` picks the trainer; everything else is shared (`student`, `trainer_args`, `lora_config`, `fit`: the
model and tokenizer, the arguments, LoRA, checkpoints and resume), so a method is its data and one trainer call:
- sft: TRL's SFTTrainer. Rows are tokenized here in TRL's prompt-completion way (the question as the
  prompt, the assistant's `<think>…</think> answer` as the completion, labels -100 over the prompt), so
  the loss is on the assistant's tokens only with any chat template; `journey_loss: masked` also sets
  -100 over the wrong paths of journey rows (their export's `wrong_spans`): the student is taught to
  notice a mistake and recover, not to write it.
- dpo: TRL's DPOTrainer on `distill export --variant dpo` pairs (prompt, chosen, rejected).
- distill: TRL's DistillationTrainer (on-policy, GKD-style): the student samples a completion of each
  prompt and is trained towards the teacher's next-token distribution on it, so the teacher must share
  the student's tokenizer.
Checkpoints go to `output_dir/checkpoint-*`; `resume: true` continues the latest.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from distill.config import Config, key, read_config
from distill.errors import ConfigError



Number = int | float


class TrainConfig(Config):
    """A training recipe (flat YAML, every key optional)."""

    what = "training"
    method: Literal["sft", "dpo", "distill"] = key(
        "sft", "sft (the rows' assistant turns) | dpo (preference pairs: distill export --variant dpo) | distill "
        "(on-policy: the student samples, teacher_model's logits are the target).", expected="sft, dpo or distill")
    data: str = key("warehouse", "An export folder (distill export --out DIR), or `warehouse` to export on the fly.")
    warehouse: str = key("./distill-data", "data: warehouse — its root.")
    runs: list = key(help="data: warehouse — run ids (default all).", factory=list)
    where: str | None = key(None, "data: warehouse — SQL predicate on traces.")
    variant: Literal["shortcut", "journey", "mixed"] = key(
        "shortcut", "data: warehouse — shortcut | journey | mixed (both); method dpo always exports the dpo variant.",
        expected="shortcut, journey or mixed")
    journey_loss: Literal["full", "masked"] = key(
        "full", "sft: journey rows' wrong paths in the loss (full) or out of it (masked: labels -100 over their "
        "tokens; the noticing and the right path stay).", expected="full or masked")
    pairs_per_problem: int = key(1, "data: warehouse, method dpo — most preference pairs per problem.",
                                 expected="a whole number >= 1", ge=1)
    dpo_beta: Number = key(0.1, "dpo: how close to the starting model the student stays (DPO's beta; higher is "
                                "closer).", expected="a number > 0", gt=0)
    teacher_model: str | None = key(None, "distill: the teacher (alias, path or Hub id); it must share the student's "
                                          "tokenizer.")
    distill_beta: Number = key(1.0, "distill: the divergence, 0 forward KL … 0.5 JSD … 1 reverse KL.",
                               expected="a number in [0, 1]", ge=0, le=1)
    max_completion_length: int = key(256, "distill: most tokens the student samples per prompt.",
                                     expected="a whole number >= 1", ge=1)
    model: str = key("smollm2-135m", "Student to start from: alias, path or Hub id.")
    output_dir: str = key("./distill-students/student", "Where checkpoints and the model go.")
    lora: bool = key(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = key(16, "LoRA rank.", expected="a whole number >= 1", ge=1)
    lora_alpha: int = key(32, "LoRA alpha.")
    learning_rate: Number = key(5e-5, "Peak learning rate.", expected="a number")
    num_train_epochs: Number = key(1.0, "Epochs over the data.", expected="a number")
    max_steps: int = key(-1, "Stop after this many optimizer steps (-1: epochs decide).")
    per_device_train_batch_size: int = key(4, "Batch size per device.", expected="a whole number >= 1", ge=1)
    gradient_accumulation_steps: int = key(1, "Batches per optimizer step.", expected="a whole number >= 1", ge=1)
    max_length: int = key(1024, "Tokens per example (longer ones are cut).", expected="a whole number >= 1", ge=1)
    packing: bool = key(False, "Pack several examples into each sequence.")
    warmup_steps: Number = key(0, "Warm-up steps (a number < 1 is a share of all steps).", expected="a number")
    logging_steps: int = key(5, "Log the loss every N steps.", expected="a whole number >= 1", ge=1)
    save_steps: int = key(100, "Checkpoint every N steps.", expected="a whole number >= 1", ge=1)
    resume: bool = key(False, "Continue from the latest checkpoint in output_dir.")
    seed: int = key(0, "Seed for data order and initialisation.")

    @field_validator("learning_rate", "num_train_epochs", "warmup_steps", "dpo_beta", "distill_beta", mode="before")
    @classmethod
    def _yaml_number(cls, v):
        if isinstance(v, str):  # YAML reads 1e-5 (no dot) as a string: say so here, not deep inside the trainer
            raise ValueError("a number (write 1.0e-5: YAML reads 1e-5 as text)")
        return v


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    cfg = TrainConfig.build(read_config(path, TrainConfig.key_names(), overrides, what="training recipe"))
    # an export folder named in the recipe may sit beside it; other paths are relative to the working directory
    if cfg.data != "warehouse" and not Path(cfg.data).is_absolute() and (path.parent / cfg.data).exists():
        cfg.data = str(path.parent / cfg.data)
    return cfg


def to_prompt_completion(row: dict) -> dict:
    msgs = row["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:], "wrong_spans": row.get("wrong_spans") or []}


def read_export(folder: Path):
    """An export folder's train rows, as a datasets.Dataset."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not folder.is_dir():
        raise ConfigError(f"training data not found: {folder} (an export folder, or data: warehouse)")
    files = sorted((folder / "data").glob("train-*.parquet"))
    if not files:
        raise ConfigError(f"{folder}: no data/train-*.parquet (made by distill export)")
    # Read the files themselves: datasets' cache for a local folder is keyed so that another export
    # folder of the same name can be served from it (seen: 8 stale rows instead of 309).
    return datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))


def load_rows(cfg: TrainConfig):
    """The method's rows: sft {prompt, completion, wrong_spans}; dpo {prompt, chosen, rejected}; distill {prompt}
    (each problem's prompt once)."""
    folder = Path(cfg.data)
    if cfg.data == "warehouse":
        from distill.warehouse.export import export

        folder = Path(tempfile.mkdtemp(prefix="distill-train-")) / "data"
        export(cfg.warehouse, folder, runs=cfg.runs or None, where=cfg.where,
               variant="dpo" if cfg.method == "dpo" else cfg.variant, pairs_per_problem=cfg.pairs_per_problem)
    ds = read_export(folder)
    cols = set(ds.column_names)
    if cfg.method == "dpo":
        if not {"prompt", "chosen", "rejected"} <= cols:
            raise ConfigError(f"{folder}: method dpo needs preference pairs (prompt, chosen, rejected: distill export "
                              f"--variant dpo), this export has {', '.join(sorted(cols & {'messages', 'prompt'}))} rows")
        return ds.select_columns(["prompt", "chosen", "rejected"])
    if "messages" not in cols and not (cfg.method == "distill" and "prompt" in cols):
        raise ConfigError(f"{folder}: expected a `messages` column (made by distill export)")
    if cfg.method == "distill":
        prompts = ds["prompt"] if "prompt" in cols else [m[:-1] for m in ds["messages"]]
        seen, unique = set(), []
        for p in prompts:  # on-policy: the student writes the completions, so a prompt once is enough
            k = repr(p)
            if k not in seen:
                seen.add(k)
                unique.append(p)
        import datasets

        return datasets.Dataset.from_dict({"prompt": unique})
    if cfg.journey_loss == "masked" and "wrong_spans" not in cols:
        raise ConfigError(f"{folder}: journey_loss: masked needs the export's `wrong_spans` column (export made by an "
                          "older distill): export it again")
    return ds.map(to_prompt_completion, remove_columns=ds.column_names)


def mask_labels(ids: list[int], offsets: list[tuple[int, int]], completion_start: int,
                spans: list[tuple[int, int]] = ()) -> list[int]:
    """Labels of one tokenized example: -100 before `completion_start` (the prompt) and on every token whose
    characters overlap one of `spans` (the wrong paths); the token ids elsewhere."""
    return [-100 if i < completion_start or any(a < e and s < b for s, e in spans) else tok
            for i, (tok, (a, b)) in enumerate(zip(ids, offsets))]


def sft_example(row: dict, tokenizer, masked: bool = False) -> dict:
    """input_ids and labels of a prompt-completion row. The completion starts where the tokens of the prompt
    alone stop matching those of prompt + completion, as TRL's SFTTrainer decides it; `masked` also puts -100
    over the row's wrong_spans (character spans of the assistant message)."""
    text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, enc["input_ids"])) if a != b),
                 min(len(prompt_ids), len(enc["input_ids"])))
    spans = []
    if masked and row.get("wrong_spans"):
        content = row["completion"][-1]["content"]
        at = text.rfind(content)
        if at < 0:
            raise ConfigError("journey_loss: masked: the chat template rewrites the assistant message, so its wrong "
                              "paths cannot be found in the text the model sees (use journey_loss: full)")
        spans = [(at + s["start"], at + s["end"]) for s in row["wrong_spans"]]
    return {"input_ids": enc["input_ids"], "labels": mask_labels(enc["input_ids"], enc["offset_mapping"], start, spans)}


def student(cfg: TrainConfig):
    """(path the student loads from, its tokenizer with a pad token) — shared by every training method."""
    from transformers import AutoTokenizer

    from distill.generators.models import resolve_model

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model_path, tokenizer


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def trainer_args(cfg: TrainConfig, config_class, **extra):
    """A TRL config (SFTConfig, DPOConfig, DistillationConfig, …) with the keys every method shares."""
    gpu = on_gpu()
    return config_class(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_strategy="steps", save_total_limit=2,
        seed=cfg.seed, report_to=[], dataloader_num_workers=0,
        disable_tqdm=not sys.stderr.isatty(),  # a progress bar with rate and ETA on a terminal only
        # bf16 on a GPU; float32 weights on a CPU, where bf16 math is slow or missing
        bf16=gpu, use_cpu=not gpu, model_init_kwargs={"dtype": "bfloat16" if gpu else "float32"},
        # recomputing activations saves GPU memory; on a CPU it only costs time (and turns off the KV cache of the
        # student's own sampling in distill: ~1 s a token for the 135M model here)
        gradient_checkpointing=gpu, **extra)


def lora_config(cfg: TrainConfig):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")


def fit(trainer, cfg: TrainConfig, tokenizer, examples: int, tokens_per_epoch: int | None = None) -> dict:
    """Train (from the latest checkpoint when `resume`), save the model and tokenizer; {output_dir, global_step,
    losses, examples, loss_tokens}: loss_tokens is the completion tokens in the loss (`tokens_per_epoch`) times
    the epochs trained, the training compute a method comparison reports (None when unknown)."""
    has_checkpoint = any(Path(cfg.output_dir).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if cfg.resume and has_checkpoint else None)
    trainer.save_model(cfg.output_dir)
    tokenizer.save_pretrained(cfg.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    epochs = round(trainer.state.epoch or 0.0, 3)
    return {"output_dir": cfg.output_dir, "global_step": trainer.state.global_step, "losses": losses,
            "examples": examples, "epochs": epochs,
            "loss_tokens": None if tokens_per_epoch is None else round(tokens_per_epoch * epochs)}


def completion_tokens(tokenizer, messages_lists) -> int:
    """Tokens of the last (assistant) message of each message list: what a preference loss is computed on."""
    return sum(len(tokenizer(m[-1]["content"], add_special_tokens=False)["input_ids"]) for m in messages_lists)


def teacher_for(cfg: TrainConfig, tokenizer, student_path: str):
    """distill: the teacher model, after checking it shares the student's tokenizer. Its output matrix is cut to
    the student's when it only has more padding rows (Qwen2.5 7B has 152064, 0.5B 151936, for the same 151665
    tokens): rows no token reaches, which TRL would otherwise refuse as another vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from distill.generators.models import resolve_model

    if not cfg.teacher_model:
        raise ConfigError("method distill needs teacher_model: the model whose logits the student learns from")
    path = resolve_model(cfg.teacher_model)
    theirs, ours = AutoTokenizer.from_pretrained(path).get_vocab(), tokenizer.get_vocab()
    if theirs != ours:
        differ = len(set(theirs.items()) ^ set(ours.items()))
        raise ConfigError(f"teacher_model {cfg.teacher_model!r} does not share the student's tokenizer ({len(theirs)} "
                          f"vs {len(ours)} tokens, {differ} entries differ): distillation compares the two models' "
                          "next-token distributions token by token")
    gpu = on_gpu()
    import torch

    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if gpu else torch.float32)
    match_vocab(teacher, AutoConfig.from_pretrained(student_path).get_text_config().vocab_size, len(ours),
                cfg.teacher_model)
    return teacher


def match_vocab(teacher, rows: int, tokens: int, name: str = "teacher") -> None:
    """Give the teacher `rows` output rows when its extra or missing rows are beyond the tokenizer's `tokens`."""
    have = teacher.config.get_text_config().vocab_size
    if have == rows:
        return
    if have < rows or tokens > rows:
        raise ConfigError(f"teacher_model {name!r} has {have} vocabulary rows and the student {rows}: distillation "
                          "needs a teacher at least as wide as the student for the same tokens")
    teacher.resize_token_embeddings(rows)  # drops rows past every token id: padding, never a next token


def train(cfg: TrainConfig) -> dict:
    """Train with `cfg.method`; returns {output_dir, global_step, losses, examples}."""
    ds = load_rows(cfg)  # first: a mistake in the data is found before a model loads
    model_path, tokenizer = student(cfg)
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = trainer_args(cfg, DPOConfig, beta=cfg.dpo_beta, max_length=cfg.max_length)
        trainer = DPOTrainer(model=model_path, args=args, train_dataset=ds, processing_class=tokenizer,
                             peft_config=lora_config(cfg))
        tokens = completion_tokens(tokenizer, ds["chosen"]) + completion_tokens(tokenizer, ds["rejected"])
    elif cfg.method == "distill":
        from trl import DistillationConfig, DistillationTrainer

        teacher = teacher_for(cfg, tokenizer, model_path)
        tokenizer.padding_side = "left"  # the student generates from left-padded prompts
        args = trainer_args(cfg, DistillationConfig, beta=cfg.distill_beta,
                            max_completion_length=cfg.max_completion_length)
        trainer = DistillationTrainer(model=model_path, teacher_model=teacher, args=args, train_dataset=ds,
                                      processing_class=tokenizer, peft_config=lora_config(cfg))
        tokens = None  # the student writes its completions during training
    else:
        from trl import SFTConfig, SFTTrainer

        masked = cfg.journey_loss == "masked"
        ds = ds.map(sft_example, fn_kwargs={"tokenizer": tokenizer, "masked": masked}, remove_columns=ds.column_names)
        # labels past max_length are cut off by the trainer: not in the loss
        tokens = sum(sum(1 for x in labels[:cfg.max_length] if x != -100) for labels in ds["labels"])
        args = trainer_args(cfg, SFTConfig, max_length=cfg.max_length, packing=cfg.packing)
        trainer = SFTTrainer(model=model_path, args=args, train_dataset=ds, processing_class=tokenizer,
                             peft_config=lora_config(cfg))
    return fit(trainer, cfg, tokenizer, len(ds), tokens)
