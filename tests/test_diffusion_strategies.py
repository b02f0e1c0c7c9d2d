"""Shared hypothesis strategies and settings for the diffusion tests (``test_diffusion_*``).

Every test compares minidiff.diffusion against an *independent* computation (a loop, a grid,
a Monte-Carlo run, a formula from the paper), never against itself.  Tests run in float64.
"""
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.diffusion import NoiseSchedule

#: One profile for all diffusion tests: no deadline, few examples (the suite stays fast).
DIFFUSION = settings(deadline=None, max_examples=15, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])


def h(a):
    """Host NumPy array of anything (array on either backend, Tensor, number)."""
    a = backend.array_of(a)
    return np.asarray(backend.to_host(a)) if backend.is_array(a) else np.asarray(a)


def dev(a):
    """A NumPy array moved to the active backend."""
    return backend.to_device(a if backend.is_array(a) else np.asarray(a))


@st.composite
def linear_schedules(draw, max_T=200):
    T = draw(st.integers(2, max_T))
    beta_start = draw(st.floats(1e-5, 1e-2))
    beta_end = draw(st.floats(beta_start * 1.01, 0.5))
    return NoiseSchedule.linear(T, beta_start, beta_end)


@st.composite
def cosine_schedules(draw, max_T=200):
    return NoiseSchedule.cosine(draw(st.integers(2, max_T)), s=draw(st.floats(1e-3, 0.2)))


@st.composite
def scaled_linear_schedules(draw, max_T=200):
    T = draw(st.integers(2, max_T))
    beta_start = draw(st.floats(1e-5, 1e-2))
    return NoiseSchedule.scaled_linear(T, beta_start, draw(st.floats(beta_start * 1.01, 0.3)))


@st.composite
def custom_schedules(draw, max_T=60):
    betas = draw(st.lists(st.floats(1e-4, 0.6), min_size=2, max_size=max_T))
    return NoiseSchedule(np.asarray(betas))


def schedules(max_T=200):
    """Any kind of schedule with 2 <= T <= max_T."""
    return st.one_of(linear_schedules(max_T), cosine_schedules(max_T),
                     scaled_linear_schedules(max_T), custom_schedules(min(max_T, 60)))


@st.composite
def schedule_and_t(draw, max_T=200, n=None):
    """(schedule, t) with t a host int64 vector of n 0-based indices (index t = step t+1)."""
    sched = draw(schedules(max_T))
    n = n or draw(st.integers(1, 4))
    t = draw(st.lists(st.integers(0, sched.num_timesteps - 1), min_size=n, max_size=n))
    return sched, np.asarray(t, dtype=np.int64)


def test_strategies_draw_valid_schedules():
    """Smoke test: the strategies above build schedules (no ValueError)."""
    from hypothesis import given

    @DIFFUSION
    @given(schedule_and_t())
    def check(st_):
        sched, t = st_
        assert 2 <= sched.num_timesteps and t.min() >= 0 and t.max() < sched.num_timesteps
    check()
