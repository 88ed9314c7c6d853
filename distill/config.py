"""Configs read from YAML: one base class, one loader, one validator, one generated reference.

Every config distill reads (the generation recipe in `distill.flows.recipe`, the training recipe in
`distill.trainers.sft`, the pipeline recipe in `distill.flows.pipeline`) is a pydantic model built from
`Config`: each key is a `key(default, help, ...)` with its help text, unknown keys are refused with the
closest known one, values are checked strictly (YAML's `1e-5` is text, not a number) and every mistake
is one `ConfigError` line in the same words: "<what> key 'n': expected a whole number >= 1, got 0".
README's key references are generated from the same fields (`reference_markdown`).
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.errors import ConfigError


def key(default: Any = None, help: str = "", expected: str | None = None, factory=None, **constraints) -> Any:
    """One config key: its default (or `factory` for a list or mapping), help text, and what a valid value is
    (`expected`, as the error message says it) with pydantic's constraints (ge=1, le=1, ...)."""
    extra = {"expected": expected} if expected else None
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra, **constraints)
    return Field(default=default, description=help, json_schema_extra=extra, **constraints)


class Config(BaseModel):
    """Base of the configs: strict types, unknown keys refused, `what` names the config in messages."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
    what: ClassVar[str] = "config"

    @classmethod
    def build(cls, data: dict):
        """Validate a mapping; a bad value is one ConfigError line that names the key and what was expected."""
        try:
            return cls(**data)
        except ValidationError as e:
            raise ConfigError(explain(cls, e)) from None

    @classmethod
    def key_names(cls) -> list[str]:
        return list(cls.model_fields)

    def to_dict(self) -> dict:
        return self.model_dump()

    def replace(self, **changes):
        """A copy with some keys changed, validated like a loaded one."""
        return type(self).build({**self.to_dict(), **changes})


TYPES = {"int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
         "float_type": "a number", "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
         "dict_type": "a mapping", "literal_error": "one of the listed values"}


def explain(cls: type[Config], error: ValidationError) -> str:
    """The first problem of a ValidationError in distill's words."""
    first = error.errors()[0]
    # loc walks through sections to a field, then maybe into a union's branch ("int", "float"): the key is
    # the last part that names a field
    name, field, owner = (str(first["loc"][-1]) if first["loc"] else "?"), None, cls
    for part in map(str, first["loc"]):
        fields = owner.model_fields if isinstance(owner, type) and issubclass(owner, BaseModel) else {}
        if part not in fields:
            break
        name, field, owner = part, fields[part], fields[part].annotation
    if first["type"] == "extra_forbidden":
        return unknown_key(cls.what, first["loc"][-1], cls.key_names(), cls.what)
    if first["type"] == "value_error":  # a validator's own words: "expected ..." follows
        expected = str(first.get("ctx", {}).get("error", first["msg"]))
    else:
        extra = (field.json_schema_extra or {}) if field is not None else {}
        branch = str(first["loc"][-1]) in ("int", "float")  # one branch of `int | float` refused it
        expected = extra.get("expected") or ("a number" if branch else TYPES.get(first["type"], first["msg"].lower()))
    value = first.get("input")
    return f"{cls.what} key {name!r}: expected {expected}, got {value!r}"


def parse_set(pairs: list[str]) -> dict:
    """`--set key=value` overrides; the value is read as YAML (numbers, lists, null)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        name, value = pair.split("=", 1)
        out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def read_config(path: str | Path, known: list[str], overrides: dict | None = None, what: str = "recipe") -> dict:
    """A YAML mapping whose keys must all be `known` (as must the --set overrides), overrides applied."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of keys to values")
    for source, keys in ((str(path), data), ("--set", overrides or {})):
        unknown = sorted(set(map(str, keys)) - set(known))
        if unknown:
            raise ConfigError(unknown_key(source, unknown[0], known, what))
    data.update(overrides or {})
    return data


def unknown_key(source: str, name, known, what: str = "recipe") -> str:
    """One short line: the closest known key when there is one, never the whole list (50-odd keys)."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}?" if close else f"every {what} key is listed in README.md"
    return f"{source}: unknown key {name!r} — {hint}"


def reference_markdown(fields: dict) -> str:
    """A key reference (key, default, meaning) of pydantic fields, so README cannot drift from the code."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, f in fields.items():
        default = f.get_default(call_default_factory=True)
        # `|` would end the cell; `<` would start an HTML tag on GitHub and hide `</think>`
        help_text = (f.description or "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{name}` | `{json.dumps(default).replace('|', chr(92) + '|')}` | {help_text} |")
    return "\n".join(rows)


def write_section(readme: Path, name: str, body: str) -> bool:
    """Rewrite what stands between README's `<!-- NAME:start -->` and `<!-- NAME:end -->`; True if it changed."""
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the markers <!-- {name}:start --> and <!-- {name}:end --> on lines of their own")
    new = text[:text.index(start) + len(start)] + body + text[text.index(end):]
    if new != text:
        readme.write_text(new)
    return new != text
