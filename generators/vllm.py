"""The vLLM backend: the offline engine, all samples of a shard submitted at once.

Finished samples are handed to `on_sample` as the engine finishes them, with the batching of one
`LLM.chat` call: the requests are queued with `LLM.enqueue_chat` (the chat template applied exactly
as `LLM.chat` does) and the engine is stepped with `LLM.llm_engine.step()`, the loop `LLM.chat` runs
itself, taking each request's output as it finishes. Each sample is its own request (n=1): vLLM turns
a request with `n` into `n` such requests anyway, but would hold the finished ones back until the last
of the `n` is done. A vLLM without `enqueue_chat` gets `LLM.chat` in chunks of conversations instead.

GPU (package `vllm`) and CPU (package `vllm-cpu`) share every line here; only the defaults for
memory and eager mode differ, chosen by whether CUDA is there.
"""
from __future__ import annotations

import os
import time

from distill.generators.base import OnSample, Sample, SamplingConfig, Teacher, register_teacher
from distill.errors import BackendError


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@register_teacher("vllm")
class VLLMGenerator(Teacher):
    options = {k: k for k in ("dtype", "max_model_len", "seed", "gpu_memory_utilization", "tensor_parallel_size",
                              "data_parallel_size")}
    # Without `enqueue_chat` (older vLLM): conversations per `LLM.chat` call, each chunk delivered as a
    # whole; smaller loses less in a crash, larger keeps the engine's batches full.
    FALLBACK_CHUNK = 64

    def __init__(self, model: str, *, dtype: str = "bfloat16", max_model_len: int | None = None,
                 seed: int = 0, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1):
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
        try:
            self.llm = LLM(
                model=model,
                dtype=dtype,
                max_model_len=max_model_len,
                # vllm-cpu sees ~9 GiB per node here and fails to start at the GPU default of 0.9.
                gpu_memory_utilization=gpu_memory_utilization or (0.4 if cpu else 0.9),
                enforce_eager=cpu if enforce_eager is None else enforce_eager,
                tensor_parallel_size=tensor_parallel_size,
                data_parallel_size=data_parallel_size,
                enable_prefix_caching=True,
                # The seed is global: vllm-cpu rejects a per-request seed in SamplingParams.
                seed=seed,
            )
        except ValueError as e:
            # vLLM refuses LLM(data_parallel_size > 1) in one process (vllm-project/vllm#27282; so does 0.32),
            # before loading anything, except on TPU: say so in distill's terms, with what does run replicas.
            if data_parallel_size == 1 or "data_parallel_size" not in str(e):
                raise
            refusal = str(e).rstrip(".")
            raise BackendError(
                f"data_parallel_size {data_parallel_size}: this vLLM's offline engine refuses it ({refusal}). For "
                "engine replicas use data_parallel_size: 1 and task_runner dask or ray with parallel_shards workers "
                "(one engine each), or backend openai against `vllm serve --data-parallel-size N`"
            ) from None

    def generate(self, conversations: list[list[dict]], sampling: SamplingConfig,
                 indices: list[list[int]] | None = None, on_sample: OnSample | None = None) -> list[list[Sample]]:
        # `indices` (each sample's index, for per-sample seeds) is unused: this engine seeds globally
        from vllm import SamplingParams

        n = sampling.n
        one = dict(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                   stop=sampling.stop or None)
        out: list[list[Sample]] = [[None] * n for _ in conversations]  # type: ignore[list-item]
        start = time.perf_counter()

        def deliver(j: int, k: int, o, c) -> None:
            out[j][k] = Sample(c.text, c.finish_reason, len(o.prompt_token_ids or []), len(c.token_ids),
                               time.perf_counter() - start)
            if on_sample is not None:
                on_sample(j, k, out[j][k])

        if not conversations:
            return []
        if not hasattr(self.llm, "enqueue_chat"):
            self._generate_chunked(conversations, SamplingParams(n=n, **one), deliver)
            return out
        llm, engine = self.llm, self.llm.llm_engine
        # conversation j's sample k is request j * n + k; the same SamplingParams for all, as LLM.chat does
        ids = llm.enqueue_chat([c for c in conversations for _ in range(n)], SamplingParams(n=1, **one),
                               use_tqdm=False)
        # enqueue_chat returns the engine's internal ids ("<counter>-<random suffix>" in 0.32) while the
        # outputs carry the id LLM gave the request (the counter): match on the counter.
        where = {rid.split("-", 1)[0]: divmod(i, n) for i, rid in enumerate(ids)}
        try:
            while where:
                if not engine.has_unfinished_requests():
                    raise BackendError(f"backend vllm: the engine finished with {len(where)} requests of this "
                                       "call unanswered")
                for o in engine.step():
                    if o.finished and o.request_id in where:
                        j, k = where.pop(o.request_id)
                        deliver(j, k, o, o.outputs[0])
        finally:
            if where:  # on_sample raised, or Ctrl-C: the engine must not keep generating for nobody
                engine.abort_request(list(where))
        return out

    def _generate_chunked(self, conversations: list[list[dict]], params, deliver) -> None:
        for lo in range(0, len(conversations), self.FALLBACK_CHUNK):
            outputs = self.llm.chat(conversations[lo:lo + self.FALLBACK_CHUNK], params, use_tqdm=False)
            for j, o in enumerate(outputs, lo):
                for k, c in enumerate(o.outputs):
                    deliver(j, k, o, c)

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
