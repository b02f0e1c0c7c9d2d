"""Every lesson runs as a plain script with --quick: each assert in it holds, it prints the
equations (or results) it checks, and it writes its figure when matplotlib is installed.
A second test checks each is written as a chapter in ``# %%`` cells."""
import os
import pathlib
import subprocess
import sys

import pytest

from minidiff import backend

REPO = pathlib.Path(__file__).resolve().parent.parent

#: lesson -> (what its output must show, what its source must contain, time limit in s)
LESSONS = {
    "00_autograd.py": (("(0.1)", "(0.2)", "(0.3)", "(0.4)"),
                       ("(0.4)", "central difference"), 120),
    "01_forward_process.py": (("(1.1)", "(1.3)", "(1.4)"), ("assert ", "savefig"), 300),
    "02_closed_form.py": (("(2.1)", "(2.3)", "(2.4)", "(2.5)", "(2.6)", "(2.7)"),
                          ("assert ", "savefig"), 300),
    "03_reverse_process.py": (("(3.1)", "(3.2)", "(3.3)", "(3.4)", "(3.7)"),
                              ("assert ", "savefig"), 300),
    "04_loss.py": (("(4.2)", "(4.3)", "(4.5)", "(4.6)", "(4.7)", "(4.8)"),
                   ("assert ", "savefig"), 300),
    "05_layers.py": (("(5.1)", "(5.4)", "(5.6)", "(5.7)", "(5.8)"),
                     ("im2col", "col2im", "sqrt(d)"), 120),
    "06_unet.py": (("(6.1)", "step-by-step forward == model(x, t)", "1,623,169"),
                   ("assert ", "savefig", "--quick"), 300),
    "07_training.py": (("(2.4)", "(4.6)", "mean loss over the first"),
                       ("assert ", "savefig", "--quick"), 300),
    "08_sampling.py": (("(3.7)", "DDIM", "(8.2)", "(8.4)", "(8.6)", "(8.7)", "(8.8)", "ms/forward",
                        "08_ddim.png"), ("assert ", "savefig", "--quick", "def check_"), 300),
    "09_autoencoder.py": (("(9.1)", "(9.3)", "Monte Carlo (9.2)", "(9.5)", "(9.6)"),
                          ("assert ", "savefig", "--quick", "scale_by_std"), 300),
    "10_latent_diffusion.py": (("(10.2)", "(10.3)", "(10.4)", "encode once", "cheaper per image"),
                               ("assert ", "savefig", "--quick", "q_sample"), 300),
    "11_conditioning.py": (("(11.1)", "(11.2)", "(11.3)", "(11.4) = (11.7)", "(11.9)",
                            "prompted accuracy", "11_guidance_rows.png", "11_inpainting.png",
                            "a tiny stand-in"),
                           ("assert ", "savefig", "--quick", "guided", "compare_figure",
                            "inpainting_accuracy", "prompted_accuracy"), 600),
    "12_architectures.py": (("(12.1)", "(12.2)-(12.3)", "(12.4)", "(12.5)", "pixel / latent",
                             "12_ldm_pipeline.png", "autoencoder rFID"),
                            ("assert ", "savefig", "--quick", "parameters_by_hand",
                             "time_sides"), 300),
    "13_the_claim.py": (("(13.5)", "(13.4)", "(13.3)", "(13.1)", "(13.6)", "max / min over t",
                         "13_samples.png"), ("assert ", "savefig", "--quick", "bound_split"),
                        600),
}


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_runs_quick(name, tmp_path):
    shown, _, timeout = LESSONS[name]
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_BACKEND"}
    if backend.get_backend() == "cupy-sim":   # the lessons too must keep CuPy's rules; on a
        env["MINIDIFF_BACKEND"] = "cupy-sim"  # real GPU they stay on NumPy (time budget)
    env["MPLBACKEND"] = "Agg"
    # run from lessons/, the working folder of a notebook opened there: MNIST and the shipped
    # checkpoint must be found all the same (minidiff.data.paths)
    result = subprocess.run([sys.executable, str(REPO / "lessons" / name), "--quick",
                             "--out", str(tmp_path)], cwd=REPO / "lessons", env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"lesson {name[:2]}: all checks passed" in result.stdout
    if name == "08_sampling.py":   # the trained-model section ran, not skipped
        assert "08_checkpoint_samples.png" in result.stdout
    for text in shown:
        assert text in result.stdout, text
    if "matplotlib is not installed" not in result.stdout:
        figures = list(tmp_path.glob("*.png"))
        assert figures and all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_is_written_in_cells(name):
    text = (REPO / "lessons" / name).read_text(encoding="utf-8")
    assert text.count("# %%") >= 8
    for needle in LESSONS[name][1]:
        assert needle in text, needle


def test_lessons_and_docs_hold_no_control_characters():
    """A formula written through a Python string that was not raw turns \\tau into a tab and
    \\big into a backspace: the notebook then renders "au" and "ig"."""
    files = [*sorted((REPO / "lessons").glob("*.py")), *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "data" / "checkpoints").glob("*.md")), REPO / "README.md"]
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            bad = [hex(ord(c)) for c in line if ord(c) < 32]
            assert not bad, f"{path.name}:{number}: control characters {bad}"


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
