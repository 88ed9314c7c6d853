"""README's generated sections: what would drift from the code is written from the code.

    python -m distill.flows.docs        # rewrite every generated section of README.md

Each section stands between `<!-- NAME:start -->` and `<!-- NAME:end -->` lines:
- recipe-reference: the generation recipe's keys by section (flows/recipe.py, Recipe);
- train-reference, pipeline-reference, rl-reference: the training, pipeline and RL recipes' keys
  (TrainConfig, PipelineConfig, RLConfig), from their fields' defaults and help, the same way;
- cli-reference: every `distill` command with its arguments and options, read from the typer app.
tests/test_recipe.py and tests/test_readme.py fail when one is stale.
"""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _cell(text: str) -> str:
    """One markdown table cell: one line; `|` would end the cell and `<` start an HTML tag on GitHub."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _default(param) -> str:
    if param.required:
        return "required"
    if getattr(param, "is_flag", False):
        return "on" if param.default else "off"
    if param.default is None or param.default == [] or callable(param.default):
        return "—"
    return f"`{param.default}`"


def _name(param) -> str:
    if param.param_type_name == "argument":
        return (param.metavar or param.name).upper()
    return " / ".join([*param.opts, *param.secondary_opts])


def cli_reference(app=None) -> str:
    """Markdown for every command of the typer app (default: `distill`): usage, what it does, and a
    table of its arguments and options with their defaults and help, in the order the code gives them."""
    import typer

    if app is None:
        from distill.flows.cli import app
    group = typer.main.get_command(app)
    commands = [(name, cmd) for name, cmd in group.commands.items() if not cmd.hidden]

    def usage(name, cmd) -> str:
        return " ".join(["distill", name, *(_name(p) for p in cmd.params if p.param_type_name == "argument")])

    def summary(cmd) -> str:  # the first paragraph of the help, on one line
        return _cell((cmd.help or "").strip().split("\n\n")[0])

    out = ["| command | what it does |", "|---|---|"]
    out += [f"| `{usage(name, cmd)}` | {summary(cmd)} |" for name, cmd in commands]
    for name, cmd in commands:
        out += ["", f"#### `{usage(name, cmd)}`", "", summary(cmd)]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if params:
            out += ["", "| argument / option | default | meaning |", "|---|---|---|"]
            for p in params:
                help_text = _cell(getattr(p, "help", None) or "")
                if p.multiple and "repeatable" not in help_text:
                    help_text += " (repeatable)"
                out.append(f"| `{_name(p)}` | {_default(p)} | {help_text} |")
    return "\n".join(out)


def sections() -> dict[str, str]:
    """The generated sections other than the recipe reference (flows/recipe.py writes that one)."""
    from distill.config import reference_markdown
    from distill.flows.pipeline import PipelineConfig
    from distill.trainers.rl import RLConfig
    from distill.trainers.sft import TrainConfig

    return {"run-identity": run_identity_markdown(),
            "train-reference": reference_markdown(TrainConfig.model_fields),
            "pipeline-reference": reference_markdown(PipelineConfig.model_fields),
            "rl-reference": reference_markdown(RLConfig.model_fields),
            "cli-reference": cli_reference()}


def run_identity_markdown() -> str:
    """Which recipe keys make a run what it is, and which only say how it runs (flows/recipe.py)."""
    from distill.flows.recipe import EXECUTION_KEYS, IDENTITY_SECTIONS, KEYS, ONLY_WHEN_SET, SECTIONS

    same = ", ".join(f"`{k}`" for k in KEYS if k in EXECUTION_KEYS)
    new = ", ".join(f"`{k}`" + (" (when set)" if k in ONLY_WHEN_SET else "") for k in KEYS if k not in EXECUTION_KEYS)
    kept = ", ".join(s for s in SECTIONS if s not in IDENTITY_SECTIONS)
    made = ", ".join(IDENTITY_SECTIONS)
    return (f"- **Keys that keep the run** (sections {kept}: how and where it runs; change them between calls "
            f"freely): {same}.\n"
            f"- **Keys that make another run** (`name` and sections {made}: which problems, samples and "
            f"decisions): {new}. The new run still "
            "copies every stored sample it can use: only a change of the prompt (`system_prompt`, `few_shot`, "
            "`prompt_template`), the teacher (`model`) or a sampling parameter (`temperature`, `top_p`, "
            "`max_tokens`, `seed`, `stop`) makes samples the teacher has not been paid for yet; a larger `n` "
            "pays only for the new sample indices.")


def section(text: str, name: str) -> str:
    """What stands between the `<!-- NAME:start -->` and `<!-- NAME:end -->` lines of `text`."""
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"no <!-- {name}:start --> … <!-- {name}:end --> lines")
    return text[text.index(start) + len(start):text.index(end)]


def write_readme(readme: Path = README) -> list[str]:
    """Rewrite every generated section of `readme`; returns the names of those that changed."""
    from distill.config import write_section
    from distill.flows.recipe import write_readme_reference

    changed = ["recipe-reference"] if write_readme_reference(readme) else []
    return changed + [name for name, body in sections().items() if write_section(readme, name, body)]


if __name__ == "__main__":
    changed = write_readme()
    print(f"README.md: rewrote {', '.join(changed)}" if changed else "README.md already current")
