"""README.md stays true: its generated sections are current, its SQL runs, its commands and recipes exist.

The recipe reference has its own test in tests/test_recipe.py; the other generated sections are here.
"""
import re
import shlex

import pytest

from distill.flows.docs import section, sections
from tests.conftest import ROOT, run_cli
from distill.warehouse.store import VIEWS, Warehouse

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", ["train-reference", "pipeline-reference", "rl-reference", "cli-reference"])
def test_generated_section_is_current(name):
    assert section(README, name) == sections()[name], f"README's {name} is stale: run `python -m distill.flows.docs`"


def test_cli_reference_has_every_command_and_option():
    import typer

    from distill.flows.cli import app

    ref = section(README, "cli-reference")
    for name, cmd in typer.main.get_command(app).commands.items():
        assert f"#### `distill {name}" in ref
        for p in cmd.params:
            if p.param_type_name == "option":
                assert f"| `{p.opts[0]}" in ref, f"distill {name} {p.opts[0]}"


def test_every_recipe_loads_with_its_loader():
    """No recipe under recipes/ has an unknown key or a bad value (a pipeline's generation and training keys too)."""
    from distill.flows.pipeline import load_pipeline
    from distill.flows.recipe import load_recipe
    from distill.trainers.rl import load_rl_config
    from distill.trainers.sft import TrainConfig, load_train_config

    paths = sorted((ROOT / "recipes").glob("*.yaml"))
    for path in paths:
        if path.name.startswith("train-"):
            load_train_config(path)
        elif path.name.startswith("rl-"):
            load_rl_config(path)
        elif path.name.startswith("pipeline-"):
            cfg, base = load_pipeline(path)
            load_recipe(base / cfg.generate, cfg.generate_set)
            TrainConfig(**cfg.train)
        else:
            load_recipe(path)
    assert {"default.yaml", "gsm8k-r1.yaml", "train-default.yaml", "train-gpu.yaml",
            "pipeline-default.yaml", "rl-default.yaml"} <= {p.name for p in paths}


def test_gpu_training_recipe_reads_numbers_as_numbers():
    from distill.trainers.sft import load_train_config

    cfg = load_train_config(ROOT / "recipes" / "train-gpu.yaml")
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-5
    assert (cfg.packing, cfg.max_length, cfg.model) == (True, 16384, "Qwen/Qwen2.5-1.5B-Instruct")


def test_views_table_names_every_view():
    table = README[README.index("## The SQL views"):README.index("<!-- sql-examples:start -->")]
    for view in [*VIEWS, "evals"]:
        assert f"| `{view}` |" in table, f"the README's views table lacks {view}"


# -- the SQL, on a real warehouse made without a model ----------------------------------------------
@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """Two runs of samples (right, wrong, unverifiable; some say "Wait"), template journeys of one run,
    two evaluations: every view has rows."""
    from distill.flows.journey import build_journeys, recipe_of_run
    from distill.trainers.evaluate import EvalResult, save
    from distill.warehouse.schema import Trace, split_think

    root = tmp_path_factory.mktemp("readme") / "wh"
    wh = Warehouse(root)
    for run, started in (("default-aaaa1111", "2025-01-01T10:00:00+00:00"),
                         ("default-bbbb2222", "2025-01-02T10:00:00+00:00")):
        traces = []
        for p in range(4):
            for i, ok in enumerate([True, False, True, None]):
                ans = 10 + p if ok else 20 + p
                completion = (f"<think>{p} plus 10 is {ans}." + (" Wait, let me check: yes." if i == 2 else "")
                              + f"</think>\n\\boxed{{{ans}}}")
                reasoning, answer = split_think(completion)
                traces.append(Trace(
                    trace_id=f"{run}-{p}{i}", run_id=run, problem_id=f"p{p}", sample_index=i,
                    source="builtin:addition", domain="math", prompt=[{"role": "user", "content": f"What is {p} + 10?"}],
                    reference=str(10 + p), teacher="smollm2-135m", backend="vllm", sampling="{}",
                    completion=completion, reasoning=reasoning, answer=answer, finish_reason="stop",
                    prompt_tokens=30, completion_tokens=10 + 3 * i, correct=ok, verifier="math",
                    verdict_reason={True: "match", False: "mismatch", None: "unparseable_reference"}[ok],
                    extracted_answer=str(ans),
                    scores={"truncation": 0.0, "rejection": None if ok is None else float(ok), "language": 1.0},
                    kept=bool(ok), rejected_by=None if ok else ("wrong_answer" if ok is False else "unverifiable"),
                    rejected_stage=None if ok else "rejection"))
        wh.write_part(run, 0, traces, expected=len(traces))
        wh.write_run({"run_id": run, "status": "finished", "started_at": started, "teacher": "smollm2-135m",
                      "backend": "vllm", "recipe": {"name": "default", "verifier": "math",
                                                    "filters": ["truncation", "rejection", "language"]},
                      "timings": {"wall": 1.0}})
    wh.refresh()
    build_journeys(recipe_of_run(root, "default-aaaa1111"), "default-aaaa1111", "template")
    for eval_id, model, p1 in (("eval-base", "smollm2-135m", 0.4), ("eval-student", "./distill-students/shortcut", 0.6)):
        # as `distill eval` stores one (trainers/evaluate.py save)
        save(EvalResult(eval_id, model, "addition", problems=4, n=4, k=4, pass_at_1=p1, pass_at_1_ci=(p1 - 0.1, p1 + 0.1),
                        maj_at_k=p1, maj_at_k_ci=(p1 - 0.2, p1 + 0.2), boxed_rate=1.0, strict_pass_at_1=p1,
                        strict_pass_at_1_ci=(p1 - 0.1, p1 + 0.1), per_problem=[]), root)
    wh.refresh()
    return root


def sql_examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", section(README, "sql-examples"), re.S)


def test_readme_has_five_or_six_sql_examples():
    assert 5 <= len(sql_examples()) <= 6


@pytest.mark.parametrize("query", sql_examples(), ids=lambda q: " ".join(q.split())[:40])
def test_sql_example_answers_on_a_real_warehouse(warehouse, query):
    cols, rows = Warehouse(warehouse).query(query)
    assert cols and rows, "the example answers nothing on a warehouse that has every kind of row"


@pytest.mark.slow
def test_sql_example_runs_through_the_cli(warehouse):
    proc = run_cli("sql", sql_examples()[0], "--format", "csv", "--warehouse", str(warehouse), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == "rejection,unverifiable,4"


# -- the commands -----------------------------------------------------------------------------------
def distill_commands() -> list[list[str]]:
    """Every `distill …` command README shows, in ```bash blocks and inline code, as argument lists
    (`accelerate launch … -m distill.flows.cli ARGS` counts as `distill ARGS`). A bare `distill NAME` in prose
    names a command without running it: it is kept as [NAME, None]. The CLI reference is left out:
    it is made from the commands themselves."""
    text = README.replace(section(README, "cli-reference"), "")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [(line, True) for line in block.replace("\\\n", " ").splitlines()]
    lines += [(span, False) for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text) if "distill " in span]
    commands = []
    for line, in_block in lines:
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            if w in ("distill", ".venv/bin/distill") or (w == "distill.flows.cli" and words[i - 1] == "-m"):
                args = []
                for a in words[i + 1:]:
                    if a in ("|", "&", "&&", ";", "||", "<", ">"):
                        break
                    args.append(a)
                if args and not args[0].isupper():  # `distill COMMAND --help` is prose, not a command
                    commands.append(args if in_block or len(args) > 1 else [args[0], None])
    return [list(c) for c in dict.fromkeys(map(tuple, commands))]  # each once, in README's order


def test_readme_server_command_has_what_the_tests_server_needs(tmp_path):
    """README's `vllm ... api_server` line carries every option and variable of the server the tests start
    under load (tests/conftest.py); without them a CPU server dies or never starts."""
    from tests.conftest import VLLMServer

    block = next(b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "openai.api_server" in b)
    words = shlex.split(block.replace("\\\n", " ").split(" &")[0], comments=True)
    env = dict(w.split("=", 1) for w in words[:words.index("python")])
    readme = {w: words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
              for i, w in enumerate(words) if w.startswith("--")}
    server = VLLMServer(tmp_path)
    ours = server.command("MODEL")
    for option in (w for w in ours if w.startswith("--")):
        assert option in readme, f"README's server command lacks {option}"
    assert readme["--host"] == "127.0.0.1" and readme["--served-model-name"] == "smollm2-135m"
    assert set(server.ENV) <= set(env) and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_after_the_demo_says_how_long_and_limits_the_eval():
    part = README.split("## After the demo")[1].split("\n## ")[0]
    evals = [line for line in part.splitlines() if line.startswith("distill eval ")]
    assert evals and all("--limit" in line for line in evals)
    assert re.search(r"`train` [\d½]+ min", part) and re.search(r"`eval` .* \d+ s", part, re.S) and "hint" in part


def test_readme_shows_many_commands():
    names = {c[0] for c in distill_commands() if c[-1] is not None}
    assert {"run", "sql", "export", "train", "eval", "journeys", "report", "compare", "serve", "pipeline"} <= names


@pytest.mark.parametrize("args", distill_commands(), ids=lambda a: " ".join(filter(None, a))[:60])
def test_readme_command_exists_with_those_options(args):
    import typer

    from distill.flows.cli import app

    commands = typer.main.get_command(app).commands
    assert args[0] in commands, f"README shows `distill {args[0]}`, which is no command"
    if args[-1] is None or "--help" in args:
        return
    for a in args[1:]:
        if re.fullmatch(r"recipes/[\w.-]+\.yaml", a):
            assert (ROOT / a).exists(), f"README names {a}, which does not exist"
    try:  # click parses and converts every argument and option, as it would before running the command
        commands[args[0]].make_context(f"distill {args[0]}", args[1:])
    except Exception as e:  # click's UsageError family (typer vendors click: no import of its own)
        pytest.fail(f"`distill {shlex.join(args)}`: {getattr(e, 'format_message', e.__str__)()}")


def test_readme_sql_commands_run(warehouse):
    """`distill sql "…"` lines outside the examples (quickstarts, prose) run on the same warehouse."""
    queries = [c[1] for c in distill_commands() if c[0] == "sql" and c[1] not in (None, "…", "QUERY")]
    assert len(queries) >= 4
    for q in queries:
        Warehouse(warehouse).query(q)  # raises on a bad column, view or syntax
