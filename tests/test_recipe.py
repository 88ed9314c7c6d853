import pytest

from distill.config import parse_set
from distill.flows.recipe import (EXECUTION_KEYS, IDENTITY_SECTIONS, SECTIONS, Recipe, load_recipe,
                                  recipe_reference)
from distill.errors import ConfigError
from tests.conftest import ROOT, run_cli

DEFAULT = ROOT / "recipes" / "default.yaml"


def test_default_recipe_loads_with_r1_sampling():
    r = load_recipe(DEFAULT)
    assert (r.name, r.sampling.temperature, r.sampling.top_p, r.teacher.model) == ("default", 0.6, 0.95, "smollm2-135m")


def test_set_overrides_are_read_as_yaml():
    assert parse_set(["n=8", "stop=[a, b]", "max_model_len=null"]) == {"n": 8, "stop": ["a", "b"], "max_model_len": None}
    assert load_recipe(DEFAULT, parse_set(["n=8"])).sampling.n == 8


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
    ref = recipe_reference()
    assert "| `temperature` | `0.6` |" in ref and "| `model` |" in ref
    assert all(f"**{s}**" in ref for s in SECTIONS)


def test_flat_keys_land_in_their_sections_and_a_section_may_be_written_whole(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("n: 8\nmodel: some/teacher\nexecution:\n  shard_size: 3\nsampling:\n  temperature: 0.7\n")
    r = load_recipe(path)
    assert (r.sampling.n, r.sampling.temperature, r.teacher.model, r.execution.shard_size) == (8, 0.7, "some/teacher", 3)
    assert r.to_dict()["n"] == 8 and "sampling" not in r.to_dict()  # run records keep the flat keys
    assert Recipe.build(r.to_dict()) == r


def test_the_run_id_hashes_the_identity_sections_only():
    """Execution keys (serving, execution) never change the run id; every identity key does."""
    base = load_recipe(DEFAULT)
    assert EXECUTION_KEYS == {k for s in ("serving", "execution") for k in SECTIONS[s].model_fields}
    assert load_recipe(DEFAULT, {"concurrency": 64, "shard_size": 2, "backend": "transformers",
                                 "warehouse": "/elsewhere"}).fingerprint() == base.fingerprint()
    for section in IDENTITY_SECTIONS:
        name = next(iter(SECTIONS[section].model_fields))
        value = getattr(getattr(base, section), name)
        changed = {"n": 5, "dataset": "other.jsonl", "model": "other", "system_prompt": "x",
                   "verifier": "code", "journey": "template"}.get(name, value)
        assert load_recipe(DEFAULT, {name: changed}).fingerprint() != base.fingerprint(), name


def test_run_ids_are_those_of_the_flat_recipe_before_sections():
    """A warehouse made before recipes had sections resumes the same runs: the default recipe's run id is
    the one the flat dataclass gave (7ccd21b5, recorded before the change)."""
    assert load_recipe(DEFAULT).fingerprint() == "7ccd21b5"


def test_data_parallel_size_is_a_serving_key_that_keeps_the_run():
    assert load_recipe(DEFAULT).serving.data_parallel_size == 1
    assert load_recipe(DEFAULT, {"data_parallel_size": 2}).fingerprint() == "7ccd21b5"


def test_an_integer_temperature_stays_an_integer():
    """Sample ids hash the sampling parameters as written: 1 and 1.0 must not drift between versions."""
    assert load_recipe(DEFAULT, {"temperature": 1}).to_dict()["temperature"] == 1
    assert isinstance(load_recipe(DEFAULT, {"temperature": 1}).sampling.temperature, int)


@pytest.mark.parametrize("override, message", [
    ({"n": "4"}, "recipe key 'n': expected a whole number >= 1, got '4'"),
    ({"temperature": "hot"}, "recipe key 'temperature': expected a number >= 0, got 'hot'"),
    ({"task_runner": "k8s"}, "recipe key 'task_runner': expected threads, dask or ray, got 'k8s'"),
    ({"data_parallel_size": 0}, "recipe key 'data_parallel_size': expected a whole number >= 1, got 0"),
    ({"api_send_seed": "yes"}, "recipe key 'api_send_seed': expected true or false, got 'yes'"),
    ({"sampling": {"nn": 1}}, "unknown key 'nn'"),
])
def test_strict_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        Recipe.build(override)
    assert message in str(e.value) and "\n" not in str(e.value)


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
@pytest.mark.slow
def test_cli_bad_input_fails_fast_with_one_line(tmp_path, args, message):
    proc = run_cli("run", *args, "--warehouse", str(tmp_path / "wh"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "wh").exists()


@pytest.mark.slow
def test_cli_bad_value_keeps_its_quotes_and_misspelling_gets_a_suggestion(tmp_path):
    proc = run_cli("run", "recipes/default.yaml", "--set", "n=abc", "--warehouse", str(tmp_path / "wh"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: recipe key 'n': expected a whole number >= 1, got 'abc'"
    proc = run_cli("run", "recipes/default.yaml", "--set", "temprature=1", "--warehouse", str(tmp_path / "wh"),
                   timeout=120)
    assert proc.stderr.strip() == "error: --set: unknown key 'temprature' — did you mean 'temperature'?"


@pytest.mark.slow
def test_cli_row_without_answer_fails_before_generation(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "What is 2 + 2?"}\n')
    proc = run_cli("run", "recipes/default.yaml", "--set", f"dataset={data}", "--warehouse", str(tmp_path / "wh"))
    assert proc.returncode == 2 and "row 1: no field 'answer'" in proc.stderr
    assert not (tmp_path / "wh").exists()


@pytest.mark.slow
def test_every_command_has_help():
    for cmd in ([], ["run"], ["sql"]):
        proc = run_cli(*cmd, "--help", timeout=60)
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_readme_recipe_reference_is_current():
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- recipe-reference:start -->\n", "\n<!-- recipe-reference:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == recipe_reference()
