"""Teacher backends. Registration is one dict; an unknown name fails with the known names."""
from __future__ import annotations

import importlib.util

from distill.errors import BackendError

BACKENDS = {
    "vllm": ("distill.generators.vllm", "VLLMGenerator"),
    "transformers": ("distill.generators.transformers", "TransformersGenerator"),
    "openai": ("distill.generators.openai", "OpenAIGenerator"),
}


def pick_backend(name: str) -> str:
    """`auto` is vLLM when it is installed, else transformers."""
    if name == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (known: auto, {', '.join(BACKENDS)})")
    return name


def make_generator(name: str, model: str, **options):
    import importlib

    module, cls = BACKENDS[pick_backend(name)]
    return getattr(importlib.import_module(module), cls)(model, **options)
