"""Lesson 05 runs as a plain script: every assert in it holds, and it writes its figure."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
LESSON = REPO / "lessons" / "05_layers.py"


def test_lesson_05_runs_quick(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_BACKEND"}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run([sys.executable, str(LESSON), "--quick", "--out", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lesson 05: all checks passed" in result.stdout
    for equation in ("(5.1)", "(5.4)", "(5.6)", "(5.7)", "(5.8)"):
        assert equation in result.stdout
    if "matplotlib is not installed" not in result.stdout:
        figures = list(tmp_path.glob("*.png"))
        assert figures and all(f.stat().st_size > 1000 for f in figures)


def test_lesson_05_is_written_in_cells():
    text = LESSON.read_text(encoding="utf-8")
    assert text.count("# %%") >= 8
    assert "im2col" in text and "col2im" in text and "sqrt(d)" in text
