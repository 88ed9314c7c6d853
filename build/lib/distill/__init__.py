"""distill: distillation data for reasoning models.

Sample long chain-of-thought traces from a teacher, verify and filter them into a SQL warehouse,
export datasets and train students. The stages are the subpackages, in the order data flows:
`distill.generators` → `distill.verifiers` → `distill.filters` → `distill.warehouse` →
`distill.trainers`; `distill.flows` wires them (Prefect flows and the `distill` CLI).
In the source tree each subpackage is a top-level folder (flows/, generators/, …); pyproject.toml
maps them under this one name, so nothing else lands in site-packages.
"""
__version__ = "0.1.0"

# In a source checkout (pyproject.toml and the stage folders beside this folder), the subpackages are
# those folders, so code run from a checkout (its tests, a second worktree) is that checkout's code
# whichever checkout the editable install points at. An installed wheel has them inside this folder.
import pathlib as _pathlib

_tree = _pathlib.Path(__file__).resolve().parent.parent
if (_tree / "pyproject.toml").is_file() and (_tree / "flows" / "__init__.py").is_file():
    __path__.append(str(_tree))
del _pathlib, _tree
