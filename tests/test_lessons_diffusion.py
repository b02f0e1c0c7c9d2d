"""Lessons 01-04 run as plain scripts with --quick: every assert in them holds, they print the
equations they check, and they write their figure (when matplotlib is installed)."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LESSONS = {
    "01_forward_process.py": ("(1.1)", "(1.3)", "(1.4)"),
    "02_closed_form.py": ("(2.1)", "(2.3)", "(2.4)", "(2.5)", "(2.6)", "(2.7)"),
    "03_reverse_process.py": ("(3.1)", "(3.2)", "(3.3)", "(3.4)", "(3.7)"),
    "04_loss.py": ("(4.2)", "(4.3)", "(4.5)", "(4.6)", "(4.7)", "(4.8)"),
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
    for equation in LESSONS[name]:
        assert equation in result.stdout, equation
    if "matplotlib is not installed" not in result.stdout:
        figures = list(tmp_path.glob("*.png"))
        assert figures and all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_is_written_in_cells_with_numbered_equations(name):
    text = (REPO / "lessons" / name).read_text(encoding="utf-8")
    assert text.count("# %%") >= 8
    assert "assert " in text and "savefig" in text


def test_library_docstrings_cite_equations_the_lessons_define():
    """Every '(k.n)' that minidiff.diffusion cites appears in lesson k's text."""
    import re
    cited = set()
    for path in (REPO / "minidiff" / "diffusion").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        cited |= set(re.findall(r"(?<![\w.])\(([1-4])\.(\d+)\)", text))
    assert cited
    texts = {p.name[:2]: p.read_text(encoding="utf-8") for p in (REPO / "lessons").glob("0*.py")}
    for lesson, number in sorted(cited):
        assert f"({lesson}.{number})" in texts[f"0{lesson}"], f"({lesson}.{number})"
