"""The command line: the demo runs end to end, and bad input gets a clear message."""
import subprocess
import sys

from minidiff import cli


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
    result = subprocess.run([sys.executable, "-m", "minidiff.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "bench" in result.stdout


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path))
    assert cli.main(["demo", "--steps", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minidiff: MNIST file missing") and "restore" in err
