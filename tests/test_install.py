"""A plain, non-editable install finds its shipped data from any folder (issue 15).

The package is built into a wheel (no network: ``--no-build-isolation --no-index``) from a
copy of the sources, installed into a fresh virtual environment that reads the running environment's
site-packages through a ``.pth`` file (numpy, Pillow, matplotlib: the ones this test runs
with, not the base interpreter's, which may lack them), and run from an empty folder: the README's ``--checkpoint data/checkpoints/quick.npz``, MNIST and the
FID classifier must all come from ``<venv>/share/minidiff/data``; so must every file the
README's commands and lessons 12-13 read (the latent, text and inpainting models, the
autoencoder, ``figures.json``, ``claim_table.json``).
"""
import importlib.util
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("minidiff", "data", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
#: what the README's commands and the lessons read, under share/minidiff/data/ once installed
SHIPPED = ("mnist/t10k-images-idx3-ubyte.gz", "checkpoints/classifier.npz",
           "checkpoints/quick.npz", "checkpoints/ldm.npz", "checkpoints/ae.npz",
           "checkpoints/txt2img.npz", "checkpoints/inpaint.npz", "checkpoints/figures.json",
           "checkpoints/claim_table.json", "checkpoints/ae.md")

pytestmark = [
    pytest.mark.slow,   # ~45 s on the 2-core machine (wheel build, venv, install, ten runs)
    pytest.mark.skipif(importlib.util.find_spec("wheel") is None,
                       reason="building a wheel needs the 'wheel' package "
                              "(pip install 'minidiff[dev]')")]


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv, env, elsewhere)``: the wheel installed into a fresh venv, the environment to
    run it with, and an empty working folder."""
    tmp_path = tmp_path_factory.mktemp("install")
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(tmp_path / "dist"), str(source)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("minidiff-*.whl"))
    with zipfile.ZipFile(wheel) as archive:       # every shipped file travels in the wheel
        names = archive.namelist()
    for shipped in SHIPPED:
        assert any(name.endswith(f"share/minidiff/data/{shipped}") for name in names), shipped
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    venv_site = _run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                     cwd=tmp_path).strip()
    ours = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    # plain path lines: the .pth files inside those folders (an editable install of the clone
    # among them) are not executed, so only the wheel's minidiff can be imported
    pathlib.Path(venv_site, "running-environment.pth").write_text("\n".join(ours) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MINIDIFF_DATA", "MINIDIFF_BACKEND")}
    return venv, env, elsewhere


def test_installed_wheel_finds_its_data_from_any_folder(installed):
    venv, env, elsewhere = installed
    python = venv / "bin" / "python"
    share = str(venv / "share" / "minidiff" / "data")
    where = _run([str(python), "-c", "import minidiff, minidiff.data.paths as p; "
                  "from minidiff.evaluate.classifier import load_classifier; load_classifier(); "
                  "print(minidiff.__file__); print(p.find('mnist')); "
                  "print(p.find('checkpoints/classifier.npz'))"], cwd=elsewhere, env=env)
    package, mnist, classifier = where.split()
    assert package.startswith(str(venv)), "the installed package, not the clone, was imported"
    assert mnist.startswith(share) and classifier.startswith(share)
    minidiff = str(venv / "bin" / "minidiff")
    out = _run([minidiff, "sample", "--checkpoint", "data/checkpoints/quick.npz", "--n", "2",
                "--steps", "2", "--out", "grid.png"], cwd=elsewhere, env=env)
    assert "wrote grid.png" in out and (elsewhere / "grid.png").stat().st_size > 100
    assert "test accuracy" in _run([minidiff, "demo", "--steps", "20", "--out", "demo"],
                                   cwd=elsewhere, env=env)
    assert _run([str(python), "-m", "minidiff", "--version"], cwd=elsewhere, env=env).strip() \
        .startswith("minidiff ")


def test_readme_commands_that_read_shipped_files_run_installed(installed):
    """Every README command that reads a shipped file, shrunk (--n, --steps, --repeat) to
    seconds, from the empty folder: the latent and text models, inpainting, eval of the
    autoencoder (which needs the classifier), eval with the README's --classifier path, bench
    ldm's defaults (both models and figures.json), and the records lessons 12-13 read."""
    venv, env, elsewhere = installed
    minidiff, share = str(venv / "bin" / "minidiff"), str(venv / "share" / "minidiff" / "data")
    small = ["--n", "2", "--steps", "2"]
    fid = ["--reference-images", "100", "--no-floor", "--stats-dir", "stats"]
    for argv, says in [
        (["sample", "--checkpoint", "data/checkpoints/ldm.npz", *small, "--out", "ldm.png"],
         "wrote ldm.png"),
        (["sample", "--checkpoint", "data/checkpoints/txt2img.npz", "--prompt",
          "a thick seven", *small, "--out", "sevens.png"], "wrote sevens.png"),
        (["inpaint", "--checkpoint", "data/checkpoints/inpaint.npz", "--image", "test:0-1",
          "--mask", "bottom", *small, "--out", "completions.png"], "wrote completions.png"),
        (["inpaint", "--checkpoint", "data/checkpoints/ldm.npz", "--image", "test:123",
          "--mask", "bottom", *small, "--out", "out.png"], "wrote out.png"),
        (["eval", "--checkpoint", "data/checkpoints/ae.npz", "--n", "20", "--batch", "20",
          *fid], "accuracy"),
        (["eval", "--checkpoint", "data/checkpoints/quick.npz", "--n", "4", "--steps", "2",
          "--bpd-images", "0", "--batch", "4", "--classifier",
          "data/checkpoints/classifier.npz", *fid], "confidence"),
        (["bench", "ldm", "--repeat", "1", "--batch", "1", "--sample-batch", "1",
          "--no-memory", "--no-torch"], "quality, latent: FID"),
    ]:
        assert says in _run([minidiff, *argv], cwd=elsewhere, env=env), argv
    found = _run([str(venv / "bin" / "python"), "-c",
                  "from minidiff.data.paths import find; "
                  "print(find('checkpoints/figures.json')); "
                  "print(find('checkpoints/claim_table.json'))"], cwd=elsewhere, env=env)
    assert all(line.startswith(share) for line in found.split())
