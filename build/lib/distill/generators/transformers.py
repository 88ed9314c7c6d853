"""The transformers backend: batched `generate` with left padding, the fallback when vLLM is absent.

`on_sample` sees each batch's samples when that batch is done (`batch_size` conversations × `n`)."""
from __future__ import annotations

import time

from distill.generators.base import OnSample, Sample, SamplingConfig, Teacher, register_teacher
from distill.errors import BackendError


@register_teacher("transformers")
class TransformersGenerator(Teacher):
    options = {"dtype": "dtype", "seed": "seed"}

    def __init__(self, model: str, *, dtype: str = "bfloat16", seed: int = 0, batch_size: int = 16, **_):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        except OSError as e:
            raise BackendError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.seed, self.batch_size = seed, batch_size

    def generate(self, conversations: list[list[dict]], sampling: SamplingConfig,
                 indices: list[list[int]] | None = None, on_sample: OnSample | None = None) -> list[list[Sample]]:
        # `indices` (each sample's index, for per-sample seeds) is unused: this engine seeds globally
        import torch

        torch.manual_seed(self.seed)
        tok, eos = self.tokenizer, set(_as_list(self.model.generation_config.eos_token_id))
        out: list[list[Sample]] = []
        for i in range(0, len(conversations), self.batch_size):
            batch = conversations[i:i + self.batch_size]
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            start = time.perf_counter()
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, do_sample=sampling.temperature > 0, temperature=sampling.temperature or None,
                    top_p=sampling.top_p, max_new_tokens=sampling.max_tokens,
                    num_return_sequences=sampling.n, pad_token_id=tok.pad_token_id,
                    stop_strings=sampling.stop or None, tokenizer=tok if sampling.stop else None,
                )
            wall = time.perf_counter() - start
            new = gen[:, enc["input_ids"].shape[1]:]
            for j in range(len(batch)):
                prompt_tokens = int(enc["attention_mask"][j].sum())
                samples = []
                for row in new[j * sampling.n:(j + 1) * sampling.n].tolist():
                    stop_at = next((k for k, t in enumerate(row) if t in eos), None)
                    ids = row if stop_at is None else row[:stop_at]
                    finish = "stop" if stop_at is not None or len(row) < sampling.max_tokens else "length"
                    samples.append(Sample(tok.decode(ids, skip_special_tokens=True), finish, prompt_tokens,
                                          len(ids) + (stop_at is not None), wall))
                out.append(samples)
                if on_sample is not None:
                    for k, sample in enumerate(samples):
                        on_sample(i + j, k, sample)
        return out


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]
