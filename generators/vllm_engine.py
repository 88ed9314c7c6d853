"""The vLLM backend: the offline engine, all prompts of a shard submitted at once with `n` each.

GPU (package `vllm`) and CPU (package `vllm-cpu`) share every line here; only the defaults for
memory and eager mode differ, chosen by whether CUDA is there.
"""
from __future__ import annotations

import os
import time

from generators.base import BackendError, Sample, SamplingConfig


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "bfloat16", max_model_len: int | None = None,
                 seed: int = 0, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool | None = None, tensor_parallel_size: int = 1):
        cpu = _on_cpu()
        if cpu:
            # Bind the OpenMP threads to every core and reserve none: the fastest start measured here.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise BackendError(
                f"backend 'vllm' is not installed ({e}): pip install 'distill[gpu]' on a GPU box, "
                "or `make install` for vllm-cpu; or set backend: transformers"
            ) from None
        self.llm = LLM(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            # vllm-cpu sees ~9 GiB per node here and fails to start at the GPU default of 0.9.
            gpu_memory_utilization=gpu_memory_utilization or (0.4 if cpu else 0.9),
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
            # The seed is global: vllm-cpu rejects a per-request seed in SamplingParams.
            seed=seed,
        )

    def generate(self, conversations: list[list[dict]], sampling: SamplingConfig,
                 indices: list[list[int]] | None = None) -> list[list[Sample]]:
        # `indices` (each sample's index, for per-sample seeds) is unused: this engine seeds globally
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, stop=sampling.stop or None)
        start = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        wall = time.perf_counter() - start
        return [
            [Sample(c.text, c.finish_reason, len(o.prompt_token_ids or []), len(c.token_ids), wall)
             for c in o.outputs]
            for o in outputs
        ]

    def close(self) -> None:
        """Stop the engine and free its memory (its engine-core process, its KV cache)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()
