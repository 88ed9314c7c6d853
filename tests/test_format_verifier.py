"""The format verifier: one closed <think> block with reasoning in it, then an answer."""
import pytest

from distill.verifiers import Verdict, get_verifier
from distill.verifiers.format import verify


@pytest.mark.parametrize("completion", [
    "<think>1 + 1 is 2.</think>\nThe answer is 2.",
    "  <think>1 + 1 is 2.</think>2",
    "1 + 1 is 2.</think>\n2",  # the template put <think> at the end of the prompt
])
def test_well_formed_is_ok(completion):
    assert verify(completion, None) == Verdict(True, "ok")


def test_reference_is_ignored():
    assert verify("<think>a</think> b", "anything").reason == "ok"


def test_no_tags_is_no_think():
    assert verify("The answer is 2.", None) == Verdict(False, "no_think")


@pytest.mark.parametrize("completion", ["<think>1 + 1 is", "</think>2<think>3"])
def test_block_never_closed_is_unclosed(completion):
    assert verify(completion, None) == Verdict(False, "unclosed_think")


@pytest.mark.parametrize("completion", [
    "<think>a</think><think>b</think> c",
    "<think>a</think> b</think> c",
])
def test_more_than_one_block_is_multiple(completion):
    assert verify(completion, None) == Verdict(False, "multiple_think")


def test_text_before_the_block_fails():
    assert verify("Sure! <think>a</think> b", None) == Verdict(False, "text_before_think")


@pytest.mark.parametrize("completion", ["<think> \n </think> 2", "</think> 2"])
def test_empty_reasoning_fails(completion):
    assert verify(completion, None) == Verdict(False, "empty_reasoning")


def test_nothing_after_the_block_is_empty_answer():
    assert verify("<think>1 + 1 is 2.</think>\n  ", None) == Verdict(False, "empty_answer")


def test_registered_under_format():
    assert get_verifier("format") is verify
