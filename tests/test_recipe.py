import pytest

from distill.flows.recipe import load_recipe, parse_set, reference_markdown
from distill.errors import ConfigError
from tests.conftest import ROOT, run_cli

DEFAULT = ROOT / "recipes" / "default.yaml"


def test_default_recipe_loads_with_r1_sampling():
    r = load_recipe(DEFAULT)
    assert (r.name, r.temperature, r.top_p, r.model) == ("default", 0.6, 0.95, "smollm2-135m")


def test_set_overrides_are_read_as_yaml():
    assert parse_set(["n=8", "stop=[a, b]", "max_model_len=null"]) == {"n": 8, "stop": ["a", "b"], "max_model_len": None}
    assert load_recipe(DEFAULT, parse_set(["n=8"])).n == 8


def test_changed_recipe_changes_the_run_fingerprint():
    assert load_recipe(DEFAULT).fingerprint() == load_recipe(DEFAULT).fingerprint()
    assert load_recipe(DEFAULT).fingerprint() != load_recipe(DEFAULT, {"n": 8}).fingerprint()


def test_unknown_key_names_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("dataset: builtin:addition\ntemprature: 0.7\n")
    with pytest.raises(ConfigError, match="unknown key 'temprature'"):
        load_recipe(path)


def test_unknown_key_suggests_the_closest_and_stays_short(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(DEFAULT, {"temprature": 0.7})
    assert str(e.value) == "--set: unknown key 'temprature' — did you mean 'temperature'?"
    with pytest.raises(ConfigError) as e:
        load_recipe(DEFAULT, {"zzz": 1})
    assert len(str(e.value)) < 100 and "did you mean" not in str(e.value)


def test_unknown_set_key_names_it():
    with pytest.raises(ConfigError, match="--set: unknown key 'nn'"):
        load_recipe(DEFAULT, {"nn": 3})


@pytest.mark.parametrize("override, key", [({"n": 0}, "n"), ({"top_p": 1.5}, "top_p"),
                                           ({"prompt_template": "no slot"}, "prompt_template"),
                                           ({"few_shot": [{"q": 1}]}, "few_shot"),
                                           ({"checkpoint_seconds": -1}, "checkpoint_seconds"),
                                           ({"checkpoint_seconds": "often"}, "checkpoint_seconds")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"recipe key '{key}'"):
        load_recipe(DEFAULT, override)


def test_reference_lists_every_key_with_help():
    ref = reference_markdown()
    assert "| `temperature` | `0.6` |" in ref and "| `model` |" in ref


# The CLI: each bad input is one line on stderr, exit 2, before any generation (no warehouse appears).
@pytest.mark.parametrize("args, message", [
    (["recipes/default.yaml", "--set", "temprature=1"], "unknown key 'temprature'"),
    (["recipes/nope.yaml"], "recipe not found: recipes/nope.yaml"),
    (["recipes/default.yaml", "--set", "model=smollm9"], "unknown model alias 'smollm9'"),
    (["recipes/default.yaml", "--set", "dataset=missing.jsonl"], "dataset file not found"),
    (["recipes/default.yaml", "--set", "verifier=chess"], "unknown verifier 'chess'"),
    (["recipes/default.yaml", "--set", "backend=tpu"], "unknown backend 'tpu'"),
    (["recipes/default.yaml", "--set", "filters=[{decontam: {against: [nope.jsonl]}}]"], "nope.jsonl"),
    (["recipes/default.yaml", "--set", "filters=[sparkle]"], "unknown filter 'sparkle'"),
])
def test_cli_bad_input_fails_fast_with_one_line(tmp_path, args, message):
    proc = run_cli("run", *args, "--warehouse", str(tmp_path / "wh"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "wh").exists()


def test_cli_bad_value_keeps_its_quotes_and_misspelling_gets_a_suggestion(tmp_path):
    proc = run_cli("run", "recipes/default.yaml", "--set", "n=abc", "--warehouse", str(tmp_path / "wh"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: recipe key 'n': expected a whole number >= 1, got 'abc'"
    proc = run_cli("run", "recipes/default.yaml", "--set", "temprature=1", "--warehouse", str(tmp_path / "wh"),
                   timeout=120)
    assert proc.stderr.strip() == "error: --set: unknown key 'temprature' — did you mean 'temperature'?"


def test_cli_row_without_answer_fails_before_generation(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "What is 2 + 2?"}\n')
    proc = run_cli("run", "recipes/default.yaml", "--set", f"dataset={data}", "--warehouse", str(tmp_path / "wh"))
    assert proc.returncode == 2 and "row 1: no field 'answer'" in proc.stderr
    assert not (tmp_path / "wh").exists()


def test_every_command_has_help():
    for cmd in ([], ["run"], ["sql"]):
        proc = run_cli(*cmd, "--help", timeout=60)
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_readme_recipe_reference_is_current():
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- recipe-reference:start -->\n", "\n<!-- recipe-reference:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == reference_markdown()
