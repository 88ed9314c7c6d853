"""The tree reads top-down: no module imports a higher floor.

Floors, lowest first (README "Code map"):
  0. distill.errors, distill.files, distill.config and warehouse/schema.py (the record);
  1. the stages: generators/, verifiers/, filters/ (each may use its own package and floor 0);
  2. warehouse/ (storage, export, journeys, the report);
  3. trainers/;
  4. flows/ (the Prefect flows and the CLI: the only place that wires stages).
"""
import ast
from pathlib import Path

from tests.conftest import ROOT

FLOOR = {"base": 0, "generators": 1, "verifiers": 1, "filters": 1, "warehouse": 2, "trainers": 3, "flows": 4}


def floor_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("errors", "files", "config", "__init__"):
        return "base", 0
    if parts[1] == "warehouse" and parts[2:3] == ["schema"]:
        return "base", 0
    return parts[1], FLOOR[parts[1]]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill"):
            # `from distill import filters` imports the package distill.filters
            found |= ({f"distill.{a.name}" for a in node.names} if node.module == "distill" else {node.module})
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distill")}
    return found


def modules():
    for folder in ("distill", *[k for k in FLOOR if k != "base"]):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name == "__main__.py":  # `python -m distill` is the CLI: the entry point, above every floor
                continue
            yield (f"distill.{path.stem}" if folder == "distill" else f"distill.{folder}.{path.stem}"), path


def test_no_module_imports_a_higher_floor():
    wrong = []
    for module, path in modules():
        stage, floor = floor_of(module)
        for target in imports(path):
            target_stage, target_floor = floor_of(target)
            if target_stage != stage and target_floor >= floor and not (floor == 0 and target_floor == 0):
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_the_stages_never_import_flows():
    for module, path in modules():
        if not module.startswith("distill.flows"):
            assert not [t for t in imports(path) if t.startswith("distill.flows")], path


def test_the_floor_rules_see_an_upward_import(tmp_path):
    """The check itself can fail: a stage that imports the flows is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from distill.flows.recipe import Recipe\nfrom distill import trainers\n")
    assert imports(bad) == {"distill.flows.recipe", "distill.trainers"}
    assert floor_of("distill.flows.recipe")[1] > floor_of("distill.filters.base")[1]
