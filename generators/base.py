"""What every teacher backend returns, and how prompts are built.

A backend takes chat conversations and returns, for each, `n` samples with their finish reason and
token counts. Everything else (trace ids, verdicts, storage) happens outside the backend.
"""
from __future__ import annotations

from dataclasses import dataclass


class BackendError(RuntimeError):
    """A backend that cannot run here: not installed, or the model cannot be loaded."""


@dataclass(slots=True)
class Sample:
    text: str
    finish_reason: str | None  # stop | length | None when the backend does not say
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None  # wall time of the request (API) or of the batch call (offline engines)
    error: str | None = None  # set (with finish_reason "error") when the backend gave up on this sample


@dataclass(slots=True)
class SamplingConfig:
    n: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = 0
    stop: list[str] | None = None

    def as_dict(self) -> dict:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "stop": self.stop or []}


def build_messages(question: str, system_prompt: str | None = None, few_shot: list[dict] | None = None,
                   template: str = "{question}") -> list[dict]:
    """System prompt, then the few-shot turns (user question, assistant answer), then the problem."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for shot in few_shot or []:
        messages.append({"role": "user", "content": template.replace("{question}", shot["question"])})
        messages.append({"role": "assistant", "content": shot["answer"]})
    messages.append({"role": "user", "content": template.replace("{question}", question)})
    return messages
