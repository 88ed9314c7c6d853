"""One error type: every error a user can meet is a DistillError, and the CLI turns it into one line."""
import importlib
import inspect
import pkgutil
import sys

import pytest

import distill
from distill.errors import BackendError, ConfigError, DistillError, PartialRunError

# Exceptions a module raises and catches itself; they never reach a caller.
INTERNAL = {"_Transient", "_Invalid", "_Refused", "_Fatal"}


def distill_modules():
    for pkg in ("flows", "generators", "filters", "verifiers", "trainers", "warehouse"):
        package = importlib.import_module(f"distill.{pkg}")
        for info in pkgutil.iter_modules(package.__path__):
            yield importlib.import_module(f"distill.{pkg}.{info.name}")


def test_every_error_class_of_distill_is_a_distill_error():
    found = []
    for module in distill_modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("distill") and name not in INTERNAL:
                found.append(cls)
                assert issubclass(cls, DistillError), f"{cls.__module__}.{name} is not a DistillError"
    assert {ConfigError, BackendError, DistillError} <= set(found)


def test_exit_codes_say_bad_input_or_a_partial_run():
    assert (DistillError.exit_code, ConfigError.exit_code, BackendError.exit_code) == (2, 2, 2)
    assert PartialRunError.exit_code == 3
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError around a config still do


@pytest.mark.parametrize("argv, code, text", [
    (["run", "no-such-recipe.yaml"], 2, "error: recipe not found: no-such-recipe.yaml"),
    (["verify", "--verifier", "nope"], 2, "error: unknown verifier 'nope' (known: code, countdown, format, judge, math, or NAME+judge)"),
    (["score", "nope"], 2, "error: unknown filter 'nope'"),
])
def test_the_cli_prints_one_line_and_the_exit_code(argv, code, text, monkeypatch, capsys):
    from distill.flows import cli

    monkeypatch.setattr(sys, "argv", ["distill", *argv])
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and err.startswith(text) and "\n" not in err and "Traceback" not in err


def test_a_message_with_brackets_is_printed_as_written(monkeypatch, capsys):
    """rich markup in a message (a list, a regex) must not be eaten or raise."""
    from distill.flows import cli

    def boom():
        raise ConfigError("recipe key 'stop': expected a list, got [bold]x[/]")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit):
        cli.main()
    assert "got [bold]x[/]" in capsys.readouterr().err
    assert distill.__version__


@pytest.mark.parametrize("args, text", [
    (["--worker", "4/4"], "error: --worker '4/4': expected K/N with 0 <= K < N"),
    (["--worker", "two"], "error: --worker 'two': expected K/N with 0 <= K < N"),
    (["--set", "worker=3"], "error: worker 3 of 1: worker must be below workers"),
])
def test_a_bad_worker_is_one_line_and_writes_nothing(args, text, tmp_path, monkeypatch, capsys):
    from distill.flows import cli
    from tests.conftest import ROOT

    wh = tmp_path / "wh"
    monkeypatch.setattr(sys, "argv", ["distill", "run", str(ROOT / "recipes" / "default.yaml"), *args,
                                      "--warehouse", str(wh)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith(text) and "\n" not in err
    assert not wh.exists()  # refused before anything was written
