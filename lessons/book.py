"""Build the lessons into a static HTML book (not a lesson itself).

    pip install -e '.[book]'                        # jupytext, nbclient, nbconvert, ipykernel,
                                                    # latex2mathml
    python lessons/book.py --out book               # every lesson, full size (what a reader opens)
    python lessons/book.py --out book --quick       # every lesson with --quick (seconds each)
    python lessons/book.py --out book --only 02 04  # some lessons

For each lesson ``NN_name.py``:

1. jupytext reads its ``# %%`` cells as a notebook;
2. nbclient executes it in a Jupyter kernel started in ``lessons/`` (the lesson sees ``--quick``
   and ``--out DIR/figures/NN_name`` in ``sys.argv``); a setup cell run first (and removed
   afterwards) makes matplotlib's ``Figure.savefig`` and Pillow's ``Image.save`` also
   *display* each PNG they write, so a figure appears as an output of the cell that made it;
3. the executed notebook is written to ``DIR/NN_name.ipynb``;
4. ``DIR/NN_name.html`` shows every cell with its printed output and figures below it.  The
   markdown cells' LaTeX (``$...$``, ``$$...$$``) becomes MathML through latex2mathml, which
   browsers typeset without a network or any JavaScript; a display equation with
   ``\\tag{4.3}`` gets the anchor ``#eq-4.3``.

``DIR/index.html`` is the table of contents (each lesson, its equations, the modules it
teaches).  The modules come from the map in ``lessons/README.md``: each module named there has
a page ``DIR/modules/...py.html`` with its source, where every equation number it cites, such
as (4.3), links to that equation in its lesson.

The exit status is 1 when a lesson fails (its page is still written, with the error shown).
"""
from __future__ import annotations

import argparse
import base64
import html
import os
import pathlib
import re
import sys
import time

LESSONS = pathlib.Path(__file__).resolve().parent
REPO = LESSONS.parent
PACKAGE = REPO / "minidiff"

#: a lesson file: two digits, an underscore, a name (book.py and _lesson.py are not lessons)
LESSON_FILE = re.compile(r"^(\d\d)_(\w+)\.py$")
#: an equation number as a lesson prints and a docstring cites it: (4.3), (5.1b), (11.4)
EQUATION_NUMBER = re.compile(r"(?<![\w.])\((\d{1,2})\.(\d{1,2}[a-z]?)\)")
TAG = re.compile(r"\\tag\{([^}]*)\}")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: run in the kernel before the lesson's first cell, then removed from the notebook
SETUP = """\
import os, sys
sys.argv = {argv!r}
__file__ = {path!r}  # a lesson may find files beside it, as a script does
os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure as _Figure
_book_savefig = _Figure.savefig
_book_saving = []                      # inside savefig, which may write through Pillow
def _savefig_and_show(self, fname, *args, **kwargs):
    _book_saving.append(True)
    try:
        result = _book_savefig(self, fname, *args, **kwargs)
    finally:
        _book_saving.pop()
    if isinstance(fname, (str, os.PathLike)) and str(fname).lower().endswith(".png"):
        from IPython.display import Image, display
        display(Image(filename=os.fspath(fname)))
    return result
_Figure.savefig = _savefig_and_show
try:                                   # pictures written by Pillow (minidiff.data.images.save_grid)
    from PIL import Image as _Image
except ImportError:
    pass
else:
    _book_pil_save = _Image.Image.save
    def _pil_save_and_show(self, fp, *args, **kwargs):
        result = _book_pil_save(self, fp, *args, **kwargs)
        if (not _book_saving and isinstance(fp, (str, os.PathLike))
                and str(fp).lower().endswith(".png")):
            from IPython.display import Image, display
            display(Image(filename=os.fspath(fp)))
        return result
    _Image.Image.save = _pil_save_and_show
"""

STYLE = """\
body { font-family: Georgia, 'DejaVu Serif', serif; max-width: 60em; margin: 0 auto;
       padding: 1em 2em; line-height: 1.5; color: #222; }
nav { font-family: sans-serif; font-size: 0.9em; margin: 0.5em 0 1.5em; }
nav a { margin-right: 1.2em; }
pre { font-family: 'DejaVu Sans Mono', monospace; font-size: 0.82em; overflow-x: auto;
      padding: 0.5em 0.8em; margin: 0.3em 0; }
pre.code { background: #f5f5f0; border-left: 3px solid #bbb; }
pre.output { background: #fff; border-left: 3px solid #7a7; color: #333;
             white-space: pre-wrap; }
pre.error { background: #fff0f0; border-left: 3px solid #c44; }
code { font-family: 'DejaVu Sans Mono', monospace; font-size: 0.9em; }
.figure img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.equation { display: flex; align-items: center; margin: 0.8em 0; }
.equation .math { flex: 1; overflow-x: auto; overflow-y: hidden; padding: 0.2em 0; }
.equation .tag { font-family: sans-serif; font-size: 0.9em; padding-left: 1em; }
.equation .tag a { color: #555; text-decoration: none; }
.equation:target { background: #ffffd8; }
math { font-size: 1.1em; }
math[display="block"] { margin: 0.2em 0; }
.modules { font-family: sans-serif; font-size: 0.9em; background: #f0f4fa;
           padding: 0.5em 1em; border-radius: 4px; }
.toc li { margin-bottom: 0.6em; }
.toc .eqs { font-family: sans-serif; font-size: 0.8em; color: #555; }
.tex-error { color: #a00; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; }
"""


# ----------------------------------------------------------------------------------- math
#: environments latex2mathml does not lay out, and the ones it does that mean the same here
SYNONYMS = ((r"\begin{aligned}", r"\begin{split}"), (r"\end{aligned}", r"\end{split}"))


def mathml(tex: str, display: bool) -> str:
    """LaTeX -> MathML (browsers typeset it natively); the TeX itself, marked, if it fails."""
    from latex2mathml.converter import convert
    for name, synonym in SYNONYMS:
        tex = tex.replace(name, synonym)
    try:
        return convert(tex, display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises its own types for what it cannot read
        print(f"  could not typeset {tex!r}: {error}", file=sys.stderr)
        return f'<code class="tex-error">{html.escape(tex)}</code>'


def equation_html(tex: str) -> str:
    """A display equation; its ``\\tag{k.n}``, if any, becomes a number with an anchor."""
    tags = TAG.findall(tex)
    body = mathml(TAG.sub("", tex).strip(), display=True)
    if not tags:
        return f'<div class="equation"><div class="math">{body}</div></div>'
    anchors = "".join(f'<span id="eq-{html.escape(tag)}"></span>' for tag in tags[1:])
    label = ", ".join(f'<a href="#eq-{html.escape(tag)}">({html.escape(tag)})</a>'
                      for tag in tags)
    return (f'<div class="equation" id="eq-{html.escape(tags[0])}">{anchors}'
            f'<div class="math">{body}</div><span class="tag">{label}</span></div>')


DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
#: $...$ on one line or across lines of one paragraph (not across a blank line)
INLINE = re.compile(r"(?<![\\$])\$(?!\s)((?:[^$\n]|\n(?![ \t]*\n))+?)(?<![\s\\])\$(?!\d)")


def markdown_html(source: str) -> tuple[str, list[str]]:
    """A markdown cell as HTML, and the equation tags it defines.  The math is taken out
    before the markdown is read (so ``_`` and ``*`` inside it stay math) and put back as
    MathML."""
    import mistune
    pieces: list[str] = []
    tags: list[str] = []

    def keep(rendered: str) -> str:
        pieces.append(rendered)
        return f"MATHPIECE{len(pieces) - 1:04d}X"

    def display(match):
        tags.extend(TAG.findall(match.group(1)))
        return "\n\n" + keep(equation_html(match.group(1))) + "\n\n"

    text = DISPLAY.sub(display, source)
    text = INLINE.sub(lambda m: keep(mathml(m.group(1), display=False)), text)
    rendered = mistune.html(text)
    rendered = re.sub(r"<p>\s*(MATHPIECE\d{4}X)\s*</p>", r"\1", rendered)
    rendered = re.sub(r"MATHPIECE(\d{4})X", lambda m: pieces[int(m.group(1))], rendered)
    return rendered, tags


# ---------------------------------------------------------------------------- the modules
def lesson_modules(readme: pathlib.Path) -> dict[str, list[str]]:
    """lesson number ('04') -> the minidiff paths (files or folders, relative to minidiff/)
    named in the README map's last column for the rows of that lesson."""
    modules: dict[str, list[str]] = {}
    if not readme.is_file():
        return modules
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) < 4 or not re.match(r"\d\d\b", cells[2]):
            continue
        numbers = re.findall(r"(?:^|,\s*)(\d\d)\b", cells[2])
        paths = [p for p in re.findall(r"`([\w./]+)`", cells[3])
                 if (PACKAGE / p).exists() and (p.endswith(".py") or p.endswith("/"))]
        for number in numbers:
            for path in paths:
                modules.setdefault(number, [])
                if path not in modules[number]:
                    modules[number].append(path)
    return modules


def module_files(path: str) -> list[str]:
    """A module path, or every .py under a folder, relative to minidiff/."""
    target = PACKAGE / path
    if target.is_dir():
        return sorted(str(p.relative_to(PACKAGE)) for p in target.rglob("*.py"))
    return [path]


def module_page(path: str) -> str:
    """``modules/<path>.html`` (or ``modules/<folder>/index.html``) inside the book."""
    return f"modules/{path}index.html" if path.endswith("/") else f"modules/{path}.html"


def link_equations(escaped: str, equations: dict[str, str], prefix: str) -> str:
    """Every '(k.n)' that the book defines becomes a link to its lesson's anchor."""
    def link(match):
        tag = f"{int(match.group(1))}.{match.group(2)}"
        page = equations.get(tag)
        if page is None:
            return match.group(0)
        return f'<a href="{prefix}{page}#eq-{tag}">{match.group(0)}</a>'
    return EQUATION_NUMBER.sub(link, escaped)


def write_module_pages(out: pathlib.Path, modules: dict[str, list[str]],
                       equations: dict[str, str]) -> None:
    for path in sorted({p for paths in modules.values() for p in paths}):
        files = module_files(path)
        if path.endswith("/"):
            depth = path.count("/") + 1
            items = "".join(f'<li><a href="{"../" * (depth - 1)}{f}.html"><code>minidiff/{f}'
                            f'</code></a></li>' for f in files)
            body = f"<h1><code>minidiff/{path}</code></h1><ul>{items}</ul>"
            page(out / module_page(path), f"minidiff/{path}", body, depth)
        for name in files:
            source = (PACKAGE / name).read_text(encoding="utf-8")
            depth = name.count("/") + 1
            escaped = link_equations(html.escape(source), equations, "../" * depth)
            body = (f"<h1><code>minidiff/{name}</code></h1><p>Equation numbers link to the "
                    f"lesson that derives them.</p><pre class=\"code\">{escaped}</pre>")
            page(out / "modules" / f"{name}.html", f"minidiff/{name}", body, depth)


def page(target: pathlib.Path, title: str, body: str, depth: int = 0, nav: str = "") -> None:
    up = "../" * depth
    nav = nav or f'<nav><a href="{up}index.html">Contents</a></nav>'
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{nav}{body}{nav}</body></html>\n", encoding="utf-8")


# ---------------------------------------------------------------------------- the lessons
def execute(path: pathlib.Path, out: pathlib.Path, quick: bool, timeout: int):
    """The lesson as an executed notebook, and the error that stopped it (or None)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = jupytext.read(path)
    figures = out / "figures" / path.stem
    argv = [str(path), "--out", str(figures)] + (["--quick"] if quick else [])
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP.format(argv=argv, path=str(path))))
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as failure:
        error = failure
    del notebook.cells[0]
    notebook.metadata.pop("jupytext", None)
    nbformat.write(notebook, out / f"{path.stem}.ipynb")
    return notebook, error


def outputs_html(cell, assets: pathlib.Path, prefix: str, counter: list[int]) -> str:
    parts, text = [], ""
    for output in cell.get("outputs", []) + [{"output_type": "end"}]:
        kind = output.get("output_type")
        if kind == "stream":            # consecutive prints: one block, as in a terminal
            text += output["text"]
            continue
        if text:
            parts.append(f'<pre class="output">{html.escape(ANSI.sub("", text))}</pre>')
            text = ""
        if kind == "end":
            break
        if kind in ("display_data", "execute_result"):
            data = output.get("data", {})
            if "image/png" in data:
                counter[0] += 1
                name = f"figure-{counter[0]:02d}.png"
                assets.mkdir(parents=True, exist_ok=True)
                (assets / name).write_bytes(base64.b64decode(data["image/png"]))
                parts.append(f'<div class="figure"><img src="{prefix}{name}" '
                             f'alt="figure {counter[0]}"></div>')
            elif "text/plain" in data:
                parts.append(f'<pre class="output">{html.escape(data["text/plain"])}</pre>')
        elif kind == "error":
            trace = ANSI.sub("", "\n".join(output.get("traceback", [])))
            parts.append(f'<pre class="error">{html.escape(trace)}</pre>')
    return "".join(parts)


def code_html(source: str) -> str:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return f'<pre class="code">{html.escape(source)}</pre>'
    return highlight(source, PythonLexer(), HtmlFormatter(nowrap=True, noclasses=True)).join(
        ('<pre class="code">', "</pre>"))


def lesson_body(notebook, stem: str, out: pathlib.Path) -> tuple[str, str, list[str]]:
    """(title, body HTML, equation tags) of an executed lesson."""
    title, parts, tags, counter = stem, [], [], [0]
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            rendered, found = markdown_html(cell.source)
            tags += found
            if title == stem:
                heading = re.search(r"^#\s+(.+)$", cell.source, re.M)
                title = heading.group(1).replace("$", "").strip() if heading else stem
            parts.append(f'<div class="markdown">{rendered}</div>')
        elif cell.cell_type == "code":
            if cell.source.strip():
                parts.append(code_html(cell.source))
            parts.append(outputs_html(cell, out / stem, f"{stem}/", counter))
    return title, "".join(parts), tags


def build(out: pathlib.Path, quick: bool = False, only=None, timeout: int = 3600,
          lessons_dir: pathlib.Path = LESSONS) -> int:
    """Build the book of the lessons in ``lessons_dir`` into ``out``; returns the number of
    lessons that failed."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    lessons = sorted(p for p in lessons_dir.glob("*.py") if LESSON_FILE.match(p.name))
    if only:
        lessons = [p for p in lessons if p.name[:2] in only]
    modules = lesson_modules(lessons_dir / "README.md")
    built, failed = [], 0
    for path in lessons:
        started = time.perf_counter()
        print(f"{path.name}: running", flush=True)
        notebook, error = execute(path, out, quick, timeout)
        title, body, tags = lesson_body(notebook, path.stem, out)
        if error is not None:
            failed += 1
            print(f"{path.name}: FAILED\n{ANSI.sub('', str(error))[-2000:]}", file=sys.stderr)
        built.append((path, title, body, tags, error))
        print(f"{path.name}: {time.perf_counter() - started:.1f} s, {len(tags)} numbered "
              f"equations", flush=True)
    equations = {tag: f"{path.stem}.html" for path, _, _, tags, _ in built for tag in tags}
    for i, (path, title, body, tags, error) in enumerate(built):
        number = path.name[:2]
        links = ['<a href="index.html">Contents</a>']
        if i > 0:
            links.insert(0, f'<a href="{built[i - 1][0].stem}.html">&larr; '
                            f'{html.escape(built[i - 1][1])}</a>')
        if i + 1 < len(built):
            links.append(f'<a href="{built[i + 1][0].stem}.html">'
                         f'{html.escape(built[i + 1][1])} &rarr;</a>')
        links.append(f'<a href="{path.stem}.ipynb">notebook</a>')
        nav = f"<nav>{''.join(links)}</nav>"
        taught = modules.get(number, [])
        box = ""
        if taught:
            items = ", ".join(f'<a href="{module_page(p)}"><code>minidiff/{p}</code></a>'
                              for p in taught)
            box = f'<p class="modules">The modules this lesson teaches: {items}</p>'
        failure = ('<pre class="error">This lesson stopped with an error; see the last '
                   'output.</pre>' if error is not None else "")
        page(out / f"{path.stem}.html", title, box + failure + body, 0, nav)
    write_module_pages(out, modules, equations)
    items = []
    for path, title, _, tags, error in built:
        eqs = " ".join(f'<a href="{path.stem}.html#eq-{t}">({t})</a>' for t in tags)
        mark = " <strong>(failed)</strong>" if error is not None else ""
        items.append(f'<li><a href="{path.stem}.html">{html.escape(title)}</a>{mark}'
                     + (f'<div class="eqs">equations: {eqs}</div>' if eqs else "") + "</li>")
    mode = "with --quick (small sizes)" if quick else "in full"
    body = (f"<h1>minidiff: the lessons</h1><p>Each lesson below was executed {mode}; its "
            f"printed checks and figures stand under the cell that made them.  The executed "
            f"notebooks (<code>.ipynb</code>) lie beside these pages.</p>"
            f'<ol class="toc" start="0">{"".join(items)}</ol>')
    page(out / "index.html", "minidiff: the lessons", body, 0, "<nav></nav>")
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the lessons into a static HTML book.")
    parser.add_argument("--out", required=True, help="folder for the book (made if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="run each lesson with --quick (small sizes, seconds each)")
    parser.add_argument("--only", nargs="+", metavar="NN",
                        help="build only these lessons, by number (e.g. 02 04)")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds a single cell may run (default 3600)")
    args = parser.parse_args(argv)
    try:
        import jupytext, latex2mathml, mistune, nbclient  # noqa: F401,E401
    except ImportError as missing:
        parser.error(f"the book needs the 'book' extra: pip install 'minidiff[book]' "
                     f"(or pip install -e '.[book]' in a checkout); missing {missing.name}")
    out = pathlib.Path(args.out).resolve()
    started = time.perf_counter()
    failed = build(out, args.quick, args.only, args.timeout)
    print(f"book: {out / 'index.html'} ({time.perf_counter() - started:.0f} s"
          f"{f', {failed} lesson(s) failed' if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
