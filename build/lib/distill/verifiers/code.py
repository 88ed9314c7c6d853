"""Code answers checked by running the reference's tests against the program, in the sandbox.

The program is the last ```python block after `</think>` (of the whole completion when `</think>` never
comes). The reference is JSON `{"tests": ..., "entry_point": ..., "setup": ...}`, a JSON list of assert
lines, or plain test text (the Python repr of such an object or list is read as one, never run as tests):
- HumanEval: tests define `check(candidate)`, and `check(<entry_point>)` is called;
- MBPP: assert lines (a list, or joined by newlines); `setup` (MBPP's test_setup_code) runs after the
  program and before the tests, because it builds objects from the program's classes.

The tests pass only if the harness reaches its last line, which prints a random sentinel: a program that
calls `exit(0)` before the tests ran has not passed them. The program runs under `__name__ ==
"solution"`, as human-eval's harness does not run it as `__main__`: a demo block that reads input()
is not part of the answer.

A reference whose tests can't fail (no assert, raise or `assert*()` call that runs) is `no_tests`, null:
with nothing to fail, every program would pass.
"""
from __future__ import annotations

import ast
import json
import re
import secrets
import textwrap

from distill.verifiers import Verdict, structured
from distill.verifiers.sandbox import run_python
from distill.warehouse.schema import THINK_CLOSE, split_think

TIMEOUT_S = 10        # a correct HumanEval/MBPP solution takes well under a second
MEMORY_MB = 512
EXTRACTED_CHARS = 4096

_BLOCK = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)^[ \t]*```", re.S | re.M | re.I)

_HARNESS = """\
__ns = {{"__name__": "solution"}}
for __name, __src in (("solution.py", {program!r}), ("setup.py", {setup!r}), ("tests.py", {tests!r})):
    exec(compile(__src, __name, "exec"), __ns)
{check}
print({sentinel!r})
"""


def verify(completion: str, reference: str | None) -> Verdict:
    ref = _parse_reference(reference)
    if isinstance(ref, str):
        return Verdict(None, ref)
    tests, entry_point, setup = ref
    program = extract_program(completion or "")
    if program is None:
        return Verdict(False, "no_code")
    extracted = program[:EXTRACTED_CHARS]
    if _syntax_error(program):
        return Verdict(False, "syntax_error", extracted)

    sentinel = f"tests-passed-{secrets.token_hex(8)}"
    check = f"exec({f'check({entry_point})'!r}, __ns)" if entry_point and _defines_check(tests) else ""
    harness = _HARNESS.format(program=program, setup=setup, tests=tests, check=check, sentinel=sentinel)
    r = run_python(harness, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    if r.killed_reason == "sandbox_error":
        return Verdict(None, "sandbox_error", extracted)
    if r.timed_out:
        return Verdict(False, "timeout", extracted)
    if r.memory_exceeded:
        return Verdict(False, "memory_exceeded", extracted)
    if r.ok and r.stdout.rstrip("\n").endswith(sentinel):
        return Verdict(True, "passed", extracted)
    return Verdict(False, "failed_tests", extracted)


def extract_program(completion: str) -> str | None:
    """The last ```python block of the answer, or None."""
    text = split_think(completion)[1] if THINK_CLOSE in completion else completion
    blocks = _BLOCK.findall(text)
    if not blocks:
        return None
    program = textwrap.dedent(blocks[-1]).strip("\n")
    return program if program.strip() else None


def _parse_reference(reference: str | None) -> tuple[str, str, str] | str:
    """(tests, entry_point, setup), or the reason the reference can't be used."""
    if reference is None or not str(reference).strip():
        return "no_reference"
    text = str(reference)
    ref = structured(text)
    if ref is None:
        try:
            ref = json.loads(text)  # a JSON string or number
        except ValueError:
            ref = text  # plain test text
    if isinstance(ref, (str, list)):
        ref = {"tests": ref}
    if not isinstance(ref, dict):
        return "bad_reference"
    tests, entry_point, setup = ref.get("tests"), ref.get("entry_point") or "", ref.get("setup") or ""
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if not isinstance(tests, str) or not tests.strip() or not isinstance(setup, str):
        return "bad_reference"
    if not isinstance(entry_point, str) or (entry_point and not entry_point.isidentifier()):
        return "bad_reference"
    if _defines_check(tests) and not entry_point:
        return "bad_reference"  # check(candidate) needs to be told which function is the candidate
    if _syntax_error(tests) or _syntax_error(setup):
        return "bad_reference"
    if not _has_test(tests, entry_point):
        return "no_tests"  # nothing in it could fail, so every program would "pass"
    return tests, entry_point, setup


def _has_test(tests: str, entry_point: str) -> bool:
    """Whether running the tests executes an assert, a raise or an `assert*()` call.

    Only code that runs counts: module-level statements, the functions they call, and `check` when the
    harness calls it. A TestCase class nobody runs, or a dict literal, holds no test.
    """
    tree = ast.parse(tests)
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    todo, seen = [tree.body], set()
    if entry_point and "check" in funcs:
        todo.append(funcs["check"].body)
        seen.add("check")
    while todo:
        stack = list(todo.pop())
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.Assert, ast.Raise)):
                return True
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name.lower().startswith("assert"):
                    return True
                if name in funcs and name not in seen:
                    seen.add(name)
                    todo.append(funcs[name].body)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.extend(ast.iter_child_nodes(node))
    return False


def _defines_check(tests: str) -> bool:
    return re.search(r"^def check\s*\(", tests, re.M) is not None


def _syntax_error(source: str) -> bool:
    try:
        compile(source, "<string>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return True
    return False
