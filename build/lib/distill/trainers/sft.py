"""SFT of a student on distilled traces with TRL's SFTTrainer: full fine-tuning or LoRA.

Rows are turned into TRL's prompt-completion shape (the question as the prompt, the assistant's
`<think>…</think> answer` as the completion), so the loss is on the assistant's tokens only, with
any chat template. Checkpoints go to `output_dir/checkpoint-*`; `resume: true` continues the latest.
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
    data: str = key("warehouse", "An export folder (distill export --out DIR), or `warehouse` to export on the fly.")
    warehouse: str = key("./distill-data", "data: warehouse — its root.")
    runs: list = key(help="data: warehouse — run ids (default all).", factory=list)
    where: str | None = key(None, "data: warehouse — SQL predicate on traces.")
    variant: Literal["shortcut", "journey", "mixed"] = key(
        "shortcut", "data: warehouse — shortcut | journey | mixed (both).", expected="shortcut, journey or mixed")
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

    @field_validator("learning_rate", "num_train_epochs", "warmup_steps", mode="before")
    @classmethod
    def _yaml_number(cls, v):
        if isinstance(v, str):  # YAML reads 1e-5 (no dot) as a string: say so here, not deep inside the trainer
            raise ValueError("a number (write 1.0e-5: YAML reads 1e-5 as text)")
        return v


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    cfg = TrainConfig.build(read_config(path, TrainConfig.keys(), overrides, what="training recipe"))
    # an export folder named in the recipe may sit beside it; other paths are relative to the working directory
    if cfg.data != "warehouse" and not Path(cfg.data).is_absolute() and (path.parent / cfg.data).exists():
        cfg.data = str(path.parent / cfg.data)
    return cfg


def to_prompt_completion(row: dict) -> dict:
    msgs = row["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def load_rows(cfg: TrainConfig):
    import datasets

    folder = Path(cfg.data)
    if cfg.data == "warehouse":
        from distill.warehouse.export import export

        folder = Path(tempfile.mkdtemp(prefix="distill-train-")) / "data"
        export(cfg.warehouse, folder, runs=cfg.runs or None, where=cfg.where, variant=cfg.variant)
    elif not folder.is_dir():
        raise ConfigError(f"training data not found: {folder} (an export folder, or data: warehouse)")
    files = sorted((folder / "data").glob("train-*.parquet"))
    if not files:
        raise ConfigError(f"{folder}: no data/train-*.parquet (made by distill export)")
    # Read the files themselves: datasets' cache for a local folder is keyed so that another export
    # folder of the same name can be served from it (seen: 8 stale rows instead of 309).
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))
    if "messages" not in ds.column_names:
        raise ConfigError(f"{folder}: expected a `messages` column (made by distill export)")
    return ds.map(to_prompt_completion, remove_columns=ds.column_names)


def train(cfg: TrainConfig) -> dict:
    """Run SFT; returns {output_dir, global_step, losses}."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.generators.models import resolve_model

    import torch

    gpu = torch.cuda.is_available()
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = load_rows(cfg)
    args = SFTConfig(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        packing=cfg.packing, completion_only_loss=True, warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_strategy="steps", save_total_limit=2,
        seed=cfg.seed, report_to=[], dataloader_num_workers=0,
        disable_tqdm=not sys.stderr.isatty(),  # a progress bar with rate and ETA on a terminal only
        # bf16 on a GPU; float32 weights on a CPU, where bf16 math is slow or missing
        bf16=gpu, use_cpu=not gpu, model_init_kwargs={"dtype": "bfloat16" if gpu else "float32"},
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    has_checkpoint = any(Path(cfg.output_dir).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if cfg.resume and has_checkpoint else None)
    trainer.save_model(cfg.output_dir)
    tokenizer.save_pretrained(cfg.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"output_dir": cfg.output_dir, "global_step": trainer.state.global_step, "losses": losses,
            "examples": len(ds)}
