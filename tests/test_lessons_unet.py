"""Lessons 06-08 run as plain scripts with --quick: every assert in them holds, they print
what they check, and they write their figure (when matplotlib is installed)."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LESSONS = {
    "06_unet.py": ("(6.1)", "step-by-step forward == model(x, t)", "1,623,169"),
    "07_training.py": ("(2.4)", "(4.6)", "mean loss over the first"),
    "08_sampling.py": ("(3.7)", "DDIM", "ms/forward"),
}


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_runs_quick(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_BACKEND"}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run([sys.executable, str(REPO / "lessons" / name), "--quick",
                             "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"lesson {name[:2]}: all checks passed" in result.stdout
    for text in LESSONS[name]:
        assert text in result.stdout, text
    if "matplotlib is not installed" not in result.stdout:
        figures = list(tmp_path.glob("*.png"))
        assert figures and all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_is_written_in_cells(name):
    text = (REPO / "lessons" / name).read_text(encoding="utf-8")
    assert text.count("# %%") >= 8
    assert "assert " in text and "savefig" in text and "--quick" in text
