"""SFT of a student on distilled traces with TRL's SFTTrainer: full fine-tuning or LoRA.

Rows are turned into TRL's prompt-completion shape (the question as the prompt, the assistant's
`<think>…</think> answer` as the completion), so the loss is on the assistant's tokens only, with
any chat template. Checkpoints go to `output_dir/checkpoint-*`; `resume: true` continues the latest.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from distill.errors import ConfigError



@dataclass
class TrainConfig:
    data: str = field(default="warehouse", metadata={
        "help": "An export folder (distill export --out DIR), or `warehouse` to export on the fly."})
    warehouse: str = field(default="./distill-data", metadata={"help": "data: warehouse — its root."})
    runs: list = field(default_factory=list, metadata={"help": "data: warehouse — run ids (default all)."})
    where: str | None = field(default=None, metadata={"help": "data: warehouse — SQL predicate on traces."})
    variant: str = field(default="shortcut", metadata={"help": "data: warehouse — shortcut | journey | mixed (both)."})
    model: str = field(default="smollm2-135m", metadata={"help": "Student to start from: alias, path or Hub id."})
    output_dir: str = field(default="./distill-students/student", metadata={"help": "Where checkpoints and the model go."})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the data."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs decide)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per example (longer ones are cut)."})
    packing: bool = field(default=False, metadata={"help": "Pack several examples into each sequence."})
    warmup_steps: float = field(default=0, metadata={"help": "Warm-up steps (a number < 1 is a share of all steps)."})
    logging_steps: int = field(default=5, metadata={"help": "Log the loss every N steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and initialisation."})

    def __post_init__(self):
        if self.variant not in ("shortcut", "journey", "mixed"):
            raise ConfigError(f"training key 'variant': expected shortcut, journey or mixed, got {self.variant!r}")
        for key in ("learning_rate", "num_train_epochs", "warmup_steps"):
            # YAML reads 1e-5 (no dot) as a string: say so here, not deep inside the trainer
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), (int, float)):
                raise ConfigError(f"training key {key!r}: expected a number, got {getattr(self, key)!r}"
                                 + (" (write 1.0e-5: YAML reads 1e-5 as text)" if isinstance(getattr(self, key), str)
                                    else ""))
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps",
                    "save_steps", "lora_r"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"training key {key!r}: expected a whole number >= 1, got {getattr(self, key)!r}")


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"training recipe not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for source, keys in ((str(path), data), ("--set", overrides or {})):
        unknown = sorted(set(keys) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)  # as flows.recipe.unknown_key
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} — "
                             + (f"did you mean {close[0]!r}?" if close else "every training key is listed in README.md"))
    data.update(overrides or {})
    cfg = TrainConfig(**data)
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
