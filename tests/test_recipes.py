"""The shipped task recipes (math500, gsm8k, game24, mbpp): their data slices read as the verifiers expect,
and each runs end to end from a copy of recipes/ alone, as in a fresh clone (no ../shared, another cwd)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from distill.flows.generate import problems_for
from distill.flows.recipe import load_recipe
from tests.conftest import DISTILL, ROOT
from distill.verifiers import get_verifier
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

RECIPES = ROOT / "recipes"
TASKS = {  # recipe: (verifier, problems in its slice)
    "math500": ("math", 50),
    "gsm8k": ("math", 50),
    "game24": ("countdown", 50),
    "mbpp": ("code", 20),
}


def problems(name: str):
    rcp = load_recipe(RECIPES / f"{name}.yaml")
    return rcp, problems_for(rcp, RECIPES)


@pytest.mark.parametrize("name", TASKS)
def test_recipe_reads_its_slice_with_the_right_verifier(name):
    rcp, probs = problems(name)
    assert (rcp.selection.verifier, len(probs)) == TASKS[name]
    assert all(p.question.strip() and p.reference.strip() for p in probs)


@pytest.mark.parametrize("name", ["math500", "gsm8k"])
def test_math_references_check_against_themselves(name):
    _, probs = problems(name)
    verify = get_verifier("math")
    verdicts = [verify(f"<think>.</think>\n\\boxed{{{p.reference}}}", p.reference) for p in probs]
    assert not [v for v in verdicts if v.correct is False]
    assert sum(v.correct is True for v in verdicts) >= 0.9 * len(probs)


def test_game24_reference_is_the_four_numbers():
    rcp, probs = problems("game24")
    assert probs[0].reference == "1 1 4 6"
    verify = get_verifier("countdown")
    assert verify("<think>.</think>\n\\boxed{(1 + 1 + 4) * 4}", probs[0].reference).reason == "wrong_numbers"
    assert verify("<think>.</think>\n\\boxed{6 * 4 * 1 * 1}", probs[0].reference).correct is True
    assert "Use the numbers 1 1 4 6 once each" in rcp.prompt.prompt_template.replace("{question}", probs[0].question)


def test_mbpp_reference_solutions_pass_in_the_sandbox_and_wrong_ones_fail():
    _, probs = problems("mbpp")
    rows = {json.loads(line)["tests"]: json.loads(line) for line in
            (RECIPES / "data" / "mbpp-test-20.jsonl").read_text().splitlines()}
    verify = get_verifier("code")
    for p in probs:
        code = rows[p.reference]["code"].replace("\r\n", "\n")
        assert verify(f"<think>.</think>\n```python\n{code}\n```", p.reference).reason == "passed", p.question
    wrong = verify("<think>.</think>\n```python\ndef remove_Occ(s, ch):\n    return s\n```", probs[0].reference)
    assert (wrong.correct, wrong.reason) == (False, "failed_tests")


@pytest.mark.parametrize("name", TASKS)
def test_recipe_runs_from_a_fresh_clone(name, tmp_path):
    """The recipe folder alone (tracked files, as a clone has them), run from another directory, tiny."""
    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "recipes"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, clone / rel)
    wh = tmp_path / "wh"
    verbose = ["--verbose"] if name == "gsm8k" else []  # one of them with the engine's logs shown
    proc = subprocess.run([*DISTILL, "run", str(clone / "recipes" / f"{name}.yaml"), "--limit", "2",
                           "--set", "n=2", "--set", "max_tokens=32", "--set", "backend=transformers",
                           "--warehouse", str(wh), *verbose],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's code, from elsewhere
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"problems\s*│\s*2\b", proc.stdout) and "query it:" in proc.stdout
    # Prefect's flow-run lines: in the run's log file, or on stderr with --verbose
    logs = list((wh / "logs").glob("*.log"))
    shown = proc.stdout + proc.stderr
    if verbose:
        assert "Finished in state" in shown and not logs
    else:
        assert "Finished in state" not in shown and "Finished in state" in logs[0].read_text()
    verifier, _ = TASKS[name]
    _, rows = Warehouse(wh).query("select verifier, correct, verdict_reason from traces")
    assert len(rows) == 4 and {r[0] for r in rows} == {verifier}
    # every sample was checked: a reference the verifier cannot use would make `correct` null
    assert all(r[1] is not None for r in rows), rows
