"""The backend seam (``minidiff.backend``): choosing NumPy or CuPy, the import discipline that
keeps numpy/cupy out of the rest of the package, and host-side file I/O."""
import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import minidiff as md
from minidiff import backend

PACKAGE = pathlib.Path(md.__file__).resolve().parent
REPO = PACKAGE.parent
# the seam itself, the MNIST reader (gzip files are decoded on the host), and the CuPy
# simulator behind the seam (backend/cupysim.py: the 'cupy-sim' backend computes with NumPy
# while refusing, at its boundary, every implicit host conversion that CuPy refuses)
ALLOWED = {"backend/__init__.py", "data/mnist.py", "backend/cupysim.py", "backend/threads.py"}
ARRAY_LIBRARIES = {"numpy", "cupy", "cupyx"}


def _imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def _array_imports(path):
    return [f"{path.relative_to(REPO)}:{line}: import {name}"
            for name, line in _imported_modules(path)
            if name.split(".")[0] in ARRAY_LIBRARIES]


def test_only_the_seam_imports_numpy_or_cupy():
    """Only backend/ (and the modules it delegates to: data/mnist.py for MNIST files on the host,
    backend/cupysim.py, the CuPy simulator that is NumPy underneath; backend/threads.py, which
    loads NumPy with its BLAS on one thread) import numpy/cupy."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 8, "the package files were not found"
    offenders = [hit for path in files if path.relative_to(PACKAGE).as_posix() not in ALLOWED
                 for hit in _array_imports(path)]
    assert not offenders, ("only backend/ (and data/mnist.py) may import numpy/cupy; use "
                           "minidiff.backend.xp() instead:\n" + "\n".join(offenders))


def test_the_import_scan_sees_imports(tmp_path):
    """The scan must find every import form (or the test above could never fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport numpy as np\nfrom cupy import asarray\n"
                      "def f():\n    import cupyx.scipy\n    from numpy.linalg import norm\n"
                      "from . import numpy\n")
    names = [name for name, _ in _imported_modules(sample)]
    assert names == ["os", "numpy", "cupy", "cupyx.scipy", "numpy.linalg"]
    assert len([n for n in names if n.split(".")[0] in ARRAY_LIBRARIES]) == 4


def test_backend_itself_imports_numpy():
    """Sanity check of the scan on a file that does import numpy."""
    assert _array_imports(PACKAGE / "backend/__init__.py")


def test_import_minidiff_does_not_import_cupy():
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", "import minidiff, sys; assert 'cupy' not in sys.modules, "
         "'cupy was imported'; print(minidiff.get_backend())"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError) as info:
        md.set_backend("tpu")
    message = str(info.value)
    assert "'tpu'" in message and "numpy" in message and "cupy" in message
    assert md.get_backend() in backend.BACKENDS


def test_cupy_unavailable_gives_a_one_line_error():
    if backend.cupy_available():
        pytest.skip("CuPy is available here, so set_backend('cupy') succeeds")
    before = md.get_backend()
    with pytest.raises(md.BackendUnavailableError) as info:
        md.set_backend("cupy")
    message = str(info.value)
    assert "\n" not in message and "cupy" in message.lower() and "unavailable" in message
    assert md.get_backend() == before            # a failed switch changes nothing
    assert issubclass(md.BackendUnavailableError, RuntimeError)


def test_environment_variable_with_unavailable_cupy_fails_clearly():
    """``import minidiff`` still works (on NumPy) and says why in one line; the command
    stops with exit status 2."""
    if backend.cupy_available():
        pytest.skip("CuPy is available here")
    env = dict(os.environ, MINIDIFF_BACKEND="cupy")
    result = subprocess.run([sys.executable, "-c",
                             "import minidiff; print(minidiff.get_backend())"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "numpy"
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "MINIDIFF_BACKEND=cupy" in result.stderr and "unavailable" in result.stderr
    command = subprocess.run([sys.executable, "-m", "minidiff", "demo", "--steps", "1"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert command.returncode == 2 and len(command.stderr.strip().splitlines()) == 1


def test_set_backend_numpy_and_xp():
    md.set_backend("numpy")
    assert md.get_backend() == "numpy" and md.xp() is np
    t = md.tensor([1.0, 2.0])
    assert t.backend == "numpy" and isinstance(t.numpy(), np.ndarray)


def test_host_helpers():
    a = np.arange(3.0)
    assert backend.is_array(a) and not backend.is_array([1.0]) and not backend.is_array(1.0)
    assert backend.backend_name_of(a) == "numpy"
    assert backend.array_module_of(a) is np
    assert backend.to_host(a) is a
    np.testing.assert_array_equal(backend.to_host([1, 2]), [1, 2])
    with pytest.raises(TypeError, match="list"):
        backend.backend_name_of([1.0])


def test_scatter_add_accumulates_repeats():
    target = np.zeros(4)
    backend.scatter_add(target, np.array([0, 2, 0]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(target, [4.0, 0.0, 2.0, 0.0])


@pytest.mark.cupy
def test_round_trip_to_cupy_and_back():
    import cupy
    x = md.tensor([1.0, -2.0, 3.0], requires_grad=True)
    on_gpu = x.to("cupy")
    assert on_gpu.backend == "cupy" and isinstance(on_gpu.data, cupy.ndarray)
    assert on_gpu.requires_grad
    (on_gpu * on_gpu).sum().backward()
    np.testing.assert_allclose(cupy.asnumpy(on_gpu.grad), [2.0, -4.0, 6.0])
    np.testing.assert_array_equal(on_gpu.to("numpy").numpy(), x.numpy())


@pytest.mark.cupy
def test_same_seed_same_numbers_on_both_backends():
    md.set_backend("numpy")
    md.manual_seed(5)
    on_host = backend.to_host(backend.randn(4, 3))
    md.set_backend("cupy")
    md.manual_seed(5)
    on_gpu = backend.randn(4, 3)
    assert backend.backend_name_of(on_gpu) == "cupy"
    np.testing.assert_array_equal(backend.to_host(on_gpu), on_host)


# --------------------------------------------------------------------------- file I/O

def test_save_npz_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "sub" / "weights.npz"
    arrays = {"w": np.arange(6.0).reshape(2, 3), "step": np.array(7),
              "t": md.tensor([1.5]).data}
    backend.save_npz(path, arrays)
    loaded = backend.load_npz(path)
    assert sorted(loaded) == ["step", "t", "w"]
    np.testing.assert_array_equal(loaded["w"], arrays["w"])
    assert loaded["step"] == 7 and loaded["t"].dtype == np.float32
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.npz"]


def test_save_npz_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    backend.save_npz(path, {"w": np.ones(3)})

    class Unconvertible:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    with pytest.raises(RuntimeError, match="cannot convert"):
        backend.save_npz(path, {"w": np.zeros(3), "bad": Unconvertible()})
    np.testing.assert_array_equal(backend.load_npz(path)["w"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_save_npz_is_written_by_rename(tmp_path, monkeypatch):
    """The final name appears only through os.replace of a finished temporary file."""
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((pathlib.Path(src), pathlib.Path(dst)))
        assert pathlib.Path(src).stat().st_size > 0
        assert not pathlib.Path(dst).exists()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "model.npz"
    backend.save_npz(path, {"w": np.ones(2)})
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == path and src.parent == tmp_path and src != path


def test_load_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, payload=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects") as info:
        backend.load_npz(path)
    assert str(path) in str(info.value) and "allow_pickle" not in str(info.value)


def test_load_npz_calls_random_bytes_not_an_npz_and_never_suggests_unpickling(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="is not an .npz file") as info:
        backend.load_npz(path)
    assert "pickle" not in str(info.value).replace("unpickl", "")


def test_load_npz_truncated_and_missing(tmp_path):
    path = tmp_path / "cut.npz"
    backend.save_npz(path, {"w": np.arange(1000.0)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        backend.load_npz(path)
    with pytest.raises(FileNotFoundError):
        backend.load_npz(tmp_path / "missing.npz")


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return 1


@pytest.mark.skipif(not (hasattr(os, "confstr") and
                         (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")),
                    reason="the malloc setting applies to glibc only")
def test_keep_freed_memory_sets_both_thresholds_unless_the_user_did(monkeypatch):
    """backend keeps freed arrays in glibc's heap (mmap threshold 32 MiB, trim threshold
    1 GiB); a MALLOC_*_THRESHOLD_ the user gave glibc wins, and nothing is set."""
    fake = _FakeLibc()
    monkeypatch.setattr(backend.ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    backend._keep_freed_memory()
    assert sorted(fake.calls) == [(-3, 32 * 2 ** 20), (-1, 2 ** 30)]
    for variable in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        fake.calls.clear()
        monkeypatch.setenv(variable, "131072")
        backend._keep_freed_memory()
        assert fake.calls == []
        monkeypatch.delenv(variable)
