"""distill: distillation data for reasoning models.

Sample long chain-of-thought traces from a teacher, verify and filter them into a SQL warehouse,
export datasets and train students. The stages are the subpackages, in the order data flows:
`distill.generators` → `distill.verifiers` → `distill.filters` → `distill.warehouse` →
`distill.trainers`; `distill.flows` wires them (Prefect flows and the `distill` CLI).
In the source tree each subpackage is a top-level folder (flows/, generators/, …); pyproject.toml
maps them under this one name, so nothing else lands in site-packages.
"""
__version__ = "0.1.0"
