"""The command line: the demo runs end to end, and bad input gets a clear message."""
import subprocess
import sys

from minidiff import commands as cli


def test_demo_learns(tmp_path, capsys):
    assert cli.main(["demo", "--steps", "300", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80.0
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_unknown_benchmark_is_named(capsys):
    assert cli.main(["bench", "nonesuch"]) == 2
    assert "expected one of layers, unet, ldm, got 'nonesuch'" in capsys.readouterr().err


def test_console_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "minidiff", "--help"],
                            capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "bench" in result.stdout


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path))
    assert cli.main(["demo", "--steps", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minidiff: MNIST file missing") and "restore" in err


def _parsers():
    """Every command's parser (the options a user can type)."""
    from minidiff.commands import (bench, claim, demo, inpaint, sample, train,
                                   train_classifier)
    from minidiff.commands import eval as evaluate
    return {"minidiff": cli.build_parser(), "train": train.build_parser(),
            "sample": sample.build_parser(), "eval": evaluate.build_parser(),
            "inpaint": inpaint.build_parser(), "claim": claim.build_parser(),
            "train-classifier": train_classifier.build_parser(), "demo": demo.build_parser(),
            "bench layers": bench.benchmark_parser("minidiff bench layers", "", "repeats"),
            "bench unet": bench._unet_parser(), "bench ldm": bench._ldm_parser()}


def test_every_option_has_a_help_text():
    import argparse
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, parser in _parsers().items() for action in parser._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not missing


def test_version_module_entry_and_bench_help():
    version = subprocess.run([sys.executable, "-m", "minidiff", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("minidiff 0.")
    bench = subprocess.run([sys.executable, "-m", "minidiff", "bench", "--help"],
                           capture_output=True, text=True)
    assert bench.returncode == 0 and "layers" in bench.stdout and "unet" in bench.stdout


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the user's errors become one line: anything else is a bug and propagates."""
    import pytest
    from minidiff.commands import demo

    def broken(argv):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(demo, "main", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo"])
