"""Shared test setup for minidiff.

* Hypothesis profile ``ci`` (no deadline: the first call of an op, or a GPU warm-up, can be
  slow) is registered and loaded; pick another with ``--hypothesis-profile``.
* Backend: the suite runs on the backend named by the environment variable
  ``MINIDIFF_BACKEND`` ("numpy", the default, "cupy", or "cupy-sim": the CuPy simulator
  that takes CuPy's code paths on a CPU).  With ``MINIDIFF_BACKEND=cupy`` on a
  machine where CuPy cannot run, every test is skipped with the reason.  Tests that need CuPy
  whatever the active backend carry ``@pytest.mark.cupy`` (or ``gpu``, see setup.cfg) and are skipped with a reason when
  ``minidiff.backend.cupy_available()`` is False.
* Every test starts on that backend, with float32 as the default dtype and a fresh seed, and
  whatever it changed (backend, dtype, generator state) is put back afterwards.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

# Read and remove the variable *before* minidiff is imported: backend.py would otherwise try
# it at import time (on a machine without CuPy: one line on stderr and NumPy instead), and the
# suite would not run on the backend that was asked for.
REQUESTED_BACKEND = os.environ.pop("MINIDIFF_BACKEND", "numpy") or "numpy"

settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=10)
settings.register_profile(  # HYPOTHESIS_PROFILE=thorough: before a release, or to hunt flakes
    "thorough", deadline=None, max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

from minidiff import backend

_CUPY_REASON = ("CuPy is not usable here (not installed or no CUDA GPU): "
                "minidiff.backend.cupy_available() is False")


def pytest_configure(config):
    config.addinivalue_line("markers", "cupy: the test needs a working CuPy + GPU "
                                       "(same as 'gpu')")


def pytest_report_header(config):
    return f"minidiff backend: {REQUESTED_BACKEND}"


def pytest_collection_modifyitems(config, items):
    if REQUESTED_BACKEND not in backend.BACKENDS:
        raise pytest.UsageError(f"MINIDIFF_BACKEND={REQUESTED_BACKEND!r}: expected one of "
                                f"{backend.BACKENDS}")
    need_cupy = REQUESTED_BACKEND == "cupy"
    marked = [item for item in items
              if item.get_closest_marker("cupy") or item.get_closest_marker("gpu")]
    if not (need_cupy or marked) or backend.cupy_available():
        return
    skip = pytest.mark.skip(reason=_CUPY_REASON)
    for item in (items if need_cupy else marked):
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _requested_backend_for_shared_fixtures():
    """Module-scoped fixtures (a model trained once for a file) are built before a test's own
    setup below: select the requested backend before any of them."""
    backend.set_backend(REQUESTED_BACKEND if REQUESTED_BACKEND in backend.BACKENDS else "numpy")


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Run each test on the requested backend with float32, seed 0; restore afterwards."""
    saved = (backend.get_backend(), backend.default_dtype(), backend.get_rng_state())
    backend.set_backend(REQUESTED_BACKEND if REQUESTED_BACKEND in backend.BACKENDS else "numpy")
    backend.set_default_dtype("float32")
    backend.manual_seed(0)
    yield
    name, dtype, rng_state = saved
    backend.set_backend(name)
    backend.set_default_dtype(dtype)
    backend.set_rng_state(rng_state)


@pytest.fixture
def backend_name():
    """The backend this run of the suite uses ("numpy", "cupy" or "cupy-sim")."""
    return backend.get_backend()


@pytest.fixture
def xp():
    """The active array module (numpy or cupy)."""
    return backend.xp()


@pytest.fixture
def float64():
    """Make float64 the default dtype for the test (restored by ``_fresh_backend_state``)."""
    backend.set_default_dtype("float64")
    return backend.default_dtype()
