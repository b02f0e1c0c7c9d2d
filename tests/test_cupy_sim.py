"""The ``cupy-sim`` backend (``minidiff/backend/cupysim.py``): a CPU stand-in for CuPy.

It must refuse exactly the implicit host conversions CuPy refuses (CuPy's ``cupy/_core/core.pyx``:
``__array__`` raises TypeError, ``__array_function__``/``__array_ufunc__`` dispatch to CuPy's
routine of the same name, numpy arrays mixed in raise), allow the explicit moves, give the same
seeded numbers as NumPy, and offer only routines that CuPy's API reference lists.  The last test
scans minidiff for every ``xp.NAME`` it uses and checks each against that verified list.
"""
import ast
import operator
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import minidiff as md
from minidiff import backend
from minidiff.backend.cupysim import CUPY_API, CUPY_LINALG, CUPY_STRIDE_TRICKS
from minidiff.backend.cupysim import module as sim
from minidiff.backend.cupysim import ndarray as SimArray

PACKAGE = pathlib.Path(md.__file__).resolve().parent


@pytest.fixture
def on_sim():
    md.set_backend("cupy-sim")   # the conftest fixture puts the previous backend back
    return sim


@pytest.fixture(params=["cupy-sim", pytest.param("cupy", marks=pytest.mark.cupy)])
def device(request):
    """The boundary tests run on the simulator and, where a GPU is at hand, on CuPy itself:
    there they check that the simulator refuses and allows what CuPy does."""
    md.set_backend(request.param)
    return request.param


def test_selectable_like_the_others(on_sim):
    assert md.get_backend() == "cupy-sim" and md.xp() is sim
    assert backend.is_device_backend() and backend.is_device_backend("cupy")
    assert not backend.is_device_backend("numpy")
    t = md.tensor([1.0, 2.0])
    assert t.backend == "cupy-sim" and type(t.data) is SimArray
    assert backend.is_array(t.data) and backend.backend_name_of(t.data) == "cupy-sim"


def test_selectable_by_environment_and_command_line():
    env = dict(os.environ, MINIDIFF_BACKEND="cupy-sim")
    done = subprocess.run(
        [sys.executable, "-c", "import sys, minidiff; t = minidiff.tensor([1.0]); "
         "print(minidiff.get_backend(), type(t.data).__module__); "
         "assert 'cupy' not in sys.modules"],
        cwd=PACKAGE.parent, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cupy-sim", "minidiff.backend.cupysim"]
    from minidiff.commands import build_parser
    assert build_parser().parse_args(["--backend", "cupy-sim", "demo"]).backend == "cupy-sim"


@pytest.mark.parametrize("convert", [
    np.asarray, np.array, lambda a: np.testing.assert_allclose(a, 0.0),
    lambda a: np.array([a, a]),
], ids=["asarray", "array", "assert_allclose", "list-of-arrays"])
def test_implicit_conversion_to_numpy_is_refused(device, convert):
    a = md.xp().zeros((2, 3))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(a)


def test_python_scalar_conversions_follow_cupy(device):
    xp = md.xp()
    a = xp.arange(6.0).reshape(2, 3)
    with pytest.raises(TypeError):
        float(a)                              # more than one element: refused (as NumPy does)
    with pytest.raises(ValueError, match="size 1"):
        a.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(a)
    s = a.sum()                               # reductions give 0-d device arrays, not scalars
    assert type(s) is xp.ndarray and s.shape == ()
    assert float(s) == 15.0 and int(a[1, 2]) == 5 and a[0, 1].item() == 1.0
    assert a.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]   # explicit: allowed, as in CuPy
    assert f"{s:.1f}" == "15.0"
    assert type(a[0, 0]) is xp.ndarray and type(a[0]) is xp.ndarray
    if device == "cupy-sim":
        with pytest.raises(TypeError):
            operator.index(a[0, 1])           # cupy.ndarray defines no __index__


def test_explicit_moves_work(device):
    xp = md.xp()
    host = np.arange(6.0).reshape(2, 3)
    a = backend.to_device(host)
    assert type(a) is xp.ndarray and backend.backend_name_of(a) == device
    for back in (backend.to_host(a), a.get(), xp.asnumpy(a)):
        assert type(back) is np.ndarray
        np.testing.assert_array_equal(back, host)
    assert not np.shares_memory(a.get(), backend.to_host(a))  # copies, as from a device
    t = md.Tensor(a, requires_grad=True)
    (t * t).sum().backward()
    np.testing.assert_array_equal(t.to("numpy").numpy(), host)
    np.testing.assert_array_equal(backend.to_host(t.grad), 2 * host)
    assert pickle.loads(pickle.dumps(a)).get().tolist() == host.tolist()


@pytest.mark.parametrize("mix", [
    lambda xp, a, n: a + n, lambda xp, a, n: n * a, lambda xp, a, n: a @ n.T,
    lambda xp, a, n: xp.concatenate([a, n]), lambda xp, a, n: np.concatenate([a, n]),
    lambda xp, a, n: xp.where(a > 0, a, n), lambda xp, a, n: np.maximum(n, a),
    lambda xp, a, n: a.__setitem__((slice(None), 0), n[:, 0]), lambda xp, a, n: a.__iadd__(n),
], ids=["add", "rmul", "matmul", "xp.concatenate", "np.concatenate", "where",
        "np.maximum", "setitem", "iadd"])
def test_mixing_with_numpy_arrays_raises(device, mix):
    """CuPy raises TypeError; the simulator raises BackendMismatchError (a TypeError)."""
    a, n = md.xp().ones((2, 3)), np.ones((2, 3))
    expected = md.BackendMismatchError if device == "cupy-sim" else (TypeError, ValueError)
    with pytest.raises(expected):
        mix(md.xp(), a, n)
    assert issubclass(md.BackendMismatchError, TypeError)


def test_tensor_ops_mixing_backends_name_both(device):
    with pytest.raises(md.BackendMismatchError, match=device):
        md.tensor([1.0, 2.0]) + md.tensor([1.0, 2.0]).to("numpy")


def test_what_cupy_allows(device):
    xp = md.xp()
    a = xp.arange(4.0)
    assert type(np.exp(a)) is xp.ndarray and type(np.sum(a)) is xp.ndarray  # dispatched
    assert type(a * np.float32(2.0)) is xp.ndarray and type(2.0 - a) is xp.ndarray
    np.testing.assert_array_equal(a[np.array([3, 0])].get(), [3.0, 0.0])  # host index: copied
    np.testing.assert_array_equal(xp.asarray(np.ones(2)).get(), [1.0, 1.0])
    a[np.array([0, 1])] = np.array([5.0, 6.0])    # advanced assignment: CuPy copies the values
    a[2] = np.array(7.0)                          # a 0-d host array is a scalar
    np.testing.assert_array_equal(a.get(), [5.0, 6.0, 7.0, 3.0])
    with pytest.raises(TypeError):
        xp.exp([1.0, 2.0])                     # CuPy's ufuncs take no lists


def test_the_simulator_offers_only_verified_names(on_sim):
    a = sim.arange(4.0)
    with pytest.raises(TypeError, match="no implementation found"):
        np.nanpercentile(a, 50)                # not in the verified CuPy list: refused
    with pytest.raises(AttributeError):
        sim.busday_count                       # noqa: B018  (a NumPy routine CuPy lacks)
    with pytest.raises(AttributeError):
        a.tofile                               # noqa: B018  (not offered by the simulator)


def test_scatter_add_accumulates_repeats_on_the_device(device):
    xp = md.xp()
    target = xp.zeros(4)
    backend.scatter_add(target, xp.asarray([0, 2, 0]), xp.asarray([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(target.get(), [4.0, 0.0, 2.0, 0.0])
    with pytest.raises(TypeError):   # a plain slice: CuPy adds with its ufunc, which refuses
        backend.scatter_add(target, slice(0, 2), np.ones(2))


def test_seeded_generator_gives_numpys_numbers(device):
    md.set_backend("numpy")
    md.manual_seed(5)
    on_host = [backend.randn(4, 3), backend.rand(5), backend.randint(0, 9, (6,))]
    md.set_backend(device)
    md.manual_seed(5)
    on_device = [backend.randn(4, 3), backend.rand(5), backend.randint(0, 9, (6,))]
    for h, d in zip(on_host, on_device):
        assert backend.backend_name_of(d) == device and d.dtype == h.dtype
        np.testing.assert_array_equal(backend.to_host(d), h)


def test_training_step_stays_on_the_device(device):
    """One optimizer step of a small conv net: every array stays on the device."""
    from minidiff import nn
    from minidiff.optim import Adam
    md.manual_seed(0)
    net = nn.Conv2d(1, 4, 3, padding=1)
    opt = Adam(net.parameters(), lr=1e-2)
    x = md.Tensor(backend.randn(2, 1, 6, 6))
    loss = (net(x) ** 2).mean()
    loss.backward()
    opt.step()
    assert all(backend.backend_name_of(p.data) == device for p in net.parameters())
    assert np.isfinite(float(loss.data))


# ----------------------------------------------------------------- the CuPy API minidiff uses

def _names_in(source: str) -> set:
    """Every NAME in ``xp.NAME``, ``xp().NAME``, ``backend.xp().NAME`` and
    ``array_module_of(...).NAME`` in ``source``, dotted (``linalg.eigh``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        func = base.func if isinstance(base, ast.Call) else None
        if ((isinstance(base, ast.Name) and base.id == "xp")
                or getattr(func, "attr", None) in ("xp", "array_module_of")
                or getattr(func, "id", None) in ("xp", "array_module_of", "_xp")):
            names.add(".".join(chain))
    # keep the longest chains only: "linalg.eigh" makes "linalg" redundant
    return {n for n in names if not any(m.startswith(n + ".") for m in names)}


def _module_names_used():
    used = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in ("backend/__init__.py", "backend/cupysim.py",
                                                    "data/mnist.py"):
            continue
        for name in _names_in(path.read_text(encoding="utf-8")):
            used.setdefault(name, path.relative_to(PACKAGE).as_posix())
    return used


#: dtypes and NumPy objects CuPy re-exports (``cupy.float32 is numpy.float32``)
REEXPORTED = {"float32", "float64", "int64", "int32", "uint8", "bool_", "finfo", "iinfo",
              "newaxis", "pi", "__name__"}


def _verified(name: str) -> bool:
    head, _, rest = name.partition(".")
    if head == "linalg":
        return rest.split(".")[0] in CUPY_LINALG
    if name.startswith("lib.stride_tricks"):
        return name.split(".")[2] in CUPY_STRIDE_TRICKS if name.count(".") >= 2 else True
    if head == "lib":
        return True
    return head in CUPY_API or head in REEXPORTED


def test_every_array_module_name_minidiff_uses_is_in_cupys_api():
    used = _module_names_used()
    assert {"zeros", "matmul", "linalg.eigh", "lib.stride_tricks.as_strided"} <= set(used)
    unverified = sorted(f"{name} ({where})" for name, where in used.items()
                        if not _verified(name))
    assert not unverified, (
        "minidiff uses array-module names not verified in CuPy's API reference; check each at "
        "https://docs.cupy.dev/en/stable/reference/ and add it to CUPY_API in "
        "minidiff/backend/cupysim.py:\n" + "\n".join(unverified))


def test_the_name_scan_sees_every_form():
    """The scan must find the forms minidiff writes (else the test above could not fail)."""
    source = ("xp.foo(1)\nbackend.xp().bar\nbackend.array_module_of(a).baz.qux\n"
              "xp.linalg.eigh(m)\n_xp(t).sign(x)\nother.zeros(3)\nxp.busday_count(1)\n")
    names = _names_in(source)
    assert names == {"foo", "bar", "baz.qux", "linalg.eigh", "sign", "busday_count"}
    assert not _verified("busday_count") and not _verified("linalg.matrix_power")
    assert _verified("linalg.eigh") and _verified("float32") and _verified("sign")


def test_every_listed_name_exists_in_the_simulator():
    for name in CUPY_API:
        assert callable(getattr(sim, name)), name
    for name in CUPY_LINALG:
        assert callable(getattr(sim.linalg, name)), name


def test_an_arrays_data_is_a_pointer_and_the_library_unwraps_raw_arrays(device):
    """``cupy.ndarray.data`` is a MemoryPointer, not an array: ``getattr(x, "data", x)``, meant
    to unwrap a Tensor, crashed ``data.from_unit_range`` on a raw CuPy array on an H200.  The
    library's functions that take "a Tensor or an array" must take a raw device array."""
    from minidiff.data.mnist import from_unit_range
    from minidiff.data.images import make_grid
    from minidiff.models.autoencoder import scale_by_std
    from minidiff.models.distributions import DiagonalGaussian
    xp = md.xp()
    a = xp.zeros((2, 1, 4, 4))
    assert not backend.is_array(a.data) and not isinstance(a.data, np.ndarray)
    assert backend.array_of(a) is a and backend.array_of(md.Tensor(a)) is a
    for x in (a, md.Tensor(a)):
        pixels = from_unit_range(x)
        assert type(pixels) is np.ndarray and pixels.shape == (2, 1, 4, 4)
        assert (pixels == 128).all()                       # 0 -> (0 + 1) * 127.5, rounded
        assert make_grid(xp.asarray(pixels), pad=0, scale=1).shape == (4, 8)

    class Constant:                                        # z = x + eps, eps ~ N(0, 1)
        def encode(self, x):
            return DiagonalGaussian(md.Tensor(x), md.Tensor(xp.zeros(x.shape)))
    md.manual_seed(0)
    assert 0.9 < scale_by_std(Constant(), xp.zeros((200, 1, 4, 4))) < 1.1
