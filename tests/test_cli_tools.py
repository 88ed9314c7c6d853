"""`distill verify` and `distill score`: one case by hand, JSON out."""
import json
import subprocess

from tests.conftest import DISTILL, ROOT
import pytest

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess


def cli(args, stdin: bytes):
    return subprocess.run([*DISTILL, *args], input=stdin, capture_output=True, cwd=ROOT, timeout=120)


def test_verify_prints_the_verdict_as_json():
    proc = cli(["verify", "--verifier", "math", "--reference", "7"], b"<think>3 + 4 = 7</think>\n\\boxed{7}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"correct": True, "reason": "match", "extracted": "7"}


def test_verify_unparseable_reference_is_null_not_false():
    proc = cli(["verify", "--reference", "\\frac{"], b"<think>x</think>\\boxed{3}")
    assert json.loads(proc.stdout)["correct"] is None


def test_verify_unknown_verifier_is_one_line():
    proc = cli(["verify", "--verifier", "chess"], b"x")
    assert proc.returncode == 2 and proc.stderr.decode().strip().startswith("error: unknown verifier 'chess'")


def test_verify_non_utf8_input_is_one_line():
    proc = cli(["verify", "--reference", "1"], b"caf\xe9 \\boxed{1}")
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr.decode() and len(proc.stderr.splitlines()) == 1


def test_score_prints_score_and_decision():
    proc = cli(["score", "truncation"], b"some reasoning")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"score": 0.0, "kept": True, "reason": None}


def test_score_unknown_filter_lists_known():
    proc = cli(["score", "nope"], b"x")
    assert proc.returncode == 2 and "known:" in proc.stderr.decode()
