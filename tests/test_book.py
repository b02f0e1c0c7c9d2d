"""The lessons build into a static HTML book (lessons/book.py, the 'book' extra).

Two real lessons are built with --quick (seconds each), and every page is checked for what a
reader needs: typeset math (MathML, no script of any kind, nothing fetched from a network),
each figure in place as a file beside the page, the printed outputs, equation anchors, the
executed notebook, and module pages whose equation numbers link back to the lessons.  A book
of two tiny lessons, one of which fails, checks that a failure is reported and shown.  The
full --quick build of all the lessons is the slow test.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("jupytext")
pytest.importorskip("nbclient")
pytest.importorskip("latex2mathml")
pytest.importorskip("ipykernel")
pytest.importorskip("mistune")

REPO = pathlib.Path(__file__).resolve().parent.parent
BOOK = REPO / "lessons" / "book.py"


def build(out, *options, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_BACKEND"}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(BOOK), "--out", str(out), *options], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def check_page(page: pathlib.Path, figures: bool = True, math: bool = True) -> str:
    text = page.read_text(encoding="utf-8")
    if math:
        assert "<math" in text, f"{page.name}: no typeset math"
    assert 'class="tex-error"' not in text, f"{page.name}: LaTeX that could not be typeset"
    assert "<script" not in text.lower(), f"{page.name}: a script (the math needs none)"
    external = re.findall(r'(?:src|href)="(?:https?:)?//[^"]*"', text)
    assert not external, f"{page.name}: fetches from a network: {external}"
    assert '<pre class="output">' in text, f"{page.name}: no printed output"
    assert '<pre class="error">' not in text, f"{page.name}: an error is shown"
    images = re.findall(r'<img src="([^"]+)"', text)
    if figures:
        assert images, f"{page.name}: no figure"
    for image in images:
        path = page.parent / image
        assert path.is_file() and path.stat().st_size > 1000, f"{page.name}: {image}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return text


def test_book_of_two_lessons(tmp_path):
    out = tmp_path / "book"
    result = build(out, "--quick", "--only", "00", "04")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    index = (out / "index.html").read_text(encoding="utf-8")
    for stem in ("00_autograd", "04_loss"):
        assert f'href="{stem}.html"' in index
        text = check_page(out / f"{stem}.html")
        assert "all checks passed" in text
        assert text.count("<img") == 1          # one figure each, shown once
        notebook = json.loads((out / f"{stem}.ipynb").read_text(encoding="utf-8"))
        outputs = [o for c in notebook["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs)
        assert not any(o.get("output_type") == "error" for o in outputs)
    loss = (out / "04_loss.html").read_text(encoding="utf-8")
    for tag in ("4.1", "4.2", "4.3", "4.5", "4.9", "4.10", "4.11", "4.12"):
        assert f'id="eq-{tag}"' in loss, tag           # each numbered equation has an anchor
        assert f'href="04_loss.html#eq-{tag}"' in index  # listed in the contents
    # the modules lesson 04 teaches, from lessons/README.md, each with a page whose
    # equation numbers link to the lesson
    assert 'href="modules/diffusion/losses.py.html"' in loss
    module = (out / "modules" / "diffusion" / "losses.py.html").read_text(encoding="utf-8")
    assert 'href="../../04_loss.html#eq-4.3"' in module


def test_a_failing_lesson_is_reported_and_shown(tmp_path):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "00_fine.py").write_text(
        '# %% [markdown]\n# # Fine\n#\n# $$\n# a = b \\tag{0.1}\n# $$\n\n'
        '# %%\nimport sys\nprint("argv", sys.argv[1:])\n\n'
        '# %%\nimport pathlib\nfrom PIL import Image\n'
        'out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])\n'
        'out.mkdir(parents=True, exist_ok=True)\n'
        'Image.new("L", (40, 40), 128).save(out / "grey.png")\n', encoding="utf-8")
    (lessons / "01_broken.py").write_text(
        '# %% [markdown]\n# # Broken, with $x_t$\n\n# %%\nassert 1 + 1 == 3, "(1.1)"\n',
        encoding="utf-8")
    code = ("import sys; sys.path.insert(0, %r); import book; "
            "sys.exit(book.build(__import__('pathlib').Path(%r), quick=True, "
            "lessons_dir=__import__('pathlib').Path(%r)))"
            % (str(BOOK.parent), str(tmp_path / "book"), str(lessons)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr   # one lesson failed
    fine = (tmp_path / "book" / "00_fine.html").read_text(encoding="utf-8")
    assert "--quick" in fine and 'id="eq-0.1"' in fine and "<math" in fine
    assert fine.count("<img") == 1              # a picture written by Pillow is shown too
    broken = (tmp_path / "book" / "01_broken.html").read_text(encoding="utf-8")
    assert '<pre class="error">' in broken and "(1.1)" in broken
    assert "(failed)" in (tmp_path / "book" / "index.html").read_text(encoding="utf-8")


def test_book_without_its_extra_says_what_to_install(tmp_path):
    code = ("import sys, runpy; sys.modules['latex2mathml'] = None; "
            "sys.argv = ['book.py', '--out', %r]; runpy.run_path(%r, run_name='__main__')"
            % (str(tmp_path), str(BOOK)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "book" in result.stderr and "pip install" in result.stderr


@pytest.mark.slow
def test_whole_book_quick(tmp_path):
    """Every lesson, --quick: each page has its math, outputs and figures."""
    out = tmp_path / "book"
    result = build(out, "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = sorted(out.glob("[0-9][0-9]_*.html"))
    assert len(pages) == len(list((REPO / "lessons").glob("[0-9][0-9]_*.py")))
    for page in pages:   # typeset math wherever the lesson's markdown carries LaTeX
        source = (REPO / "lessons" / f"{page.stem}.py").read_text(encoding="utf-8")
        check_page(page, math="$" in source)
