"""What every teacher backend returns, and how prompts are built.

A backend takes chat conversations and returns, for each, `n` samples with their finish reason and
token counts. Everything else (trace ids, verdicts, storage) happens outside the backend.

Every backend has the same call:

    generate(conversations, sampling, indices=None, on_sample=None) -> list[list[Sample]]

- returns `sampling.n` samples per conversation, in order (`out[j][k]`: conversation j, sample k);
  a sample the backend gave up on is there too, with finish_reason "error" and `error` set;
- `indices` (optional): each sample's sample_index, `sampling.n` per conversation, when only some
  samples of a problem are generated (a resumed shard); backends with per-sample seeds follow it;
- `on_sample` (optional): `on_sample(j, k, sample)`, called once per sample (errors included) as soon
  as that sample is finished, from the thread that called `generate`, so that a caller can persist
  finished samples while the rest are still generating: a crash, a kill or an error later in the call
  then loses only what was in flight. How soon "as soon as" is depends on the backend: each request
  (vllm, openai) or each batch (transformers). If `on_sample` raises, `generate` stops the requests
  still running and raises that exception. A call that fails (BackendError) has delivered every sample
  finished before the failure through `on_sample` first.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar


@dataclass(slots=True)
class Sample:
    text: str
    finish_reason: str | None  # stop | length | None when the backend does not say
    prompt_tokens: int | None
    completion_tokens: int | None
    # wall time of the request (openai), from the call's start to this sample's end (vllm: requests run
    # together), or of its batch (transformers)
    latency_s: float | None
    error: str | None = None  # set (with finish_reason "error") when the backend gave up on this sample


# on_sample(j, k, sample): conversation j's k-th sample is finished (see the module docstring)
OnSample = Callable[[int, int, Sample], None]


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


class Teacher:
    """A teacher backend: one file in generators/, one subclass registered by name.

    A subclass declares which recipe keys it takes (`options`: recipe key → its constructor's keyword; the
    recipe's `seed` and serving section are offered) and whether it loads weights here (`local`: the
    recipe's model name is then resolved to a local path first, the embedded alias converted once).
    Adding a backend (SGLang, a hosted API) is one file with one class like this, imported in
    generators/__init__.py; nothing else in distill names backends.
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, str]] = {}
    local: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: dict) -> "Teacher":
        """Build from a recipe's teacher settings (Recipe.teacher_settings): the model and the declared options."""
        from distill.generators.models import resolve_model

        model = resolve_model(settings["model"]) if cls.local else settings["model"]
        return cls(model, **{kw: settings[k] for k, kw in cls.options.items() if k in settings})

    def generate(self, conversations: list[list[dict]], sampling: SamplingConfig, indices: list[int] | None = None,
                 on_sample: OnSample | None = None) -> list[list[Sample]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the engine (GPU memory, server connections); the default has nothing to free."""


TEACHERS: dict[str, type[Teacher]] = {}


def register_teacher(name: str):
    """Class decorator: make a Teacher subclass the backend `name` of recipes (`backend: name`)."""
    def wrap(cls: type[Teacher]) -> type[Teacher]:
        cls.name = name
        TEACHERS[name] = cls
        return cls
    return wrap


def build_messages(question: str, system_prompt: str | None = None, few_shot: list[dict] | None = None,
                   template: str = "{question}") -> list[dict]:
    """System prompt, then the few-shot turns (user question, assistant answer), then the problem."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for shot in few_shot or []:
        messages.append({"role": "user", "content": template.replace("{question}", shot["question"])})
        messages.append({"role": "assistant", "content": shot["answer"]})
    messages.append({"role": "user", "content": template.replace("{question}", question)})
    return messages
