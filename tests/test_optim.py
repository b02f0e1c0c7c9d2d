"""Optimizers against their update equations written out step by step; clipping, the
warm-up + cosine schedule, EMA, and exact state_dict round trips (lesson 05)."""
import math

import numpy as np
import pytest

from minidiff import backend, nn, optim, tensor


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(tensor(rng.standard_normal(s), dtype="float64"))
            for s in [(3, 2), (4,)]]


def grads_at(step, params):
    """A deterministic gradient sequence that depends on the parameters (like a real loss)."""
    return [np.sin(backend.to_host(p.data) * (step + 1)) + 0.1 * step for p in params]


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, grads_at(t, params)):
            p.grad = backend.to_device(g, p.backend)
        opt.step()
    return [backend.to_host(p.data).copy() for p in params]


def host(params):
    return [backend.to_host(p.data).copy() for p in params]


def test_sgd_momentum_matches_equations():
    params = make_params()
    ref = host(params)
    lr, mu, wd = 0.1, 0.9, 0.01
    got = run(optim.SGD(params, lr=lr, momentum=mu, weight_decay=wd), params, 5)
    bufs = [None, None]
    for t in range(5):
        for i, g in enumerate(grads_at(t, [nn.Parameter(tensor(r)) for r in ref])):
            g = g + wd * ref[i]
            bufs[i] = g if bufs[i] is None else mu * bufs[i] + g
            ref[i] = ref[i] - lr * bufs[i]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("cls,wd", [(optim.Adam, 0.0), (optim.Adam, 0.1), (optim.AdamW, 0.1)])
def test_adam_family_matches_equations(cls, wd):
    params = make_params(1)
    ref = host(params)
    lr, b1, b2, eps = 0.05, 0.8, 0.95, 1e-8
    got = run(cls(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), params, 6)
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    for t in range(1, 7):
        gs = grads_at(t - 1, [nn.Parameter(tensor(r)) for r in ref])
        for i, g in enumerate(gs):
            if cls is optim.AdamW:
                ref[i] = ref[i] * (1 - lr * wd)       # decoupled decay
            else:
                g = g + wd * ref[i]                    # L2 in the gradient
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            ref[i] = ref[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_adamw_differs_from_adam_with_l2():
    a, b = make_params(2), make_params(2)
    ra = run(optim.Adam(a, lr=0.1, weight_decay=0.5), a, 3)
    rb = run(optim.AdamW(b, lr=0.1, weight_decay=0.5), b, 3)
    assert not np.allclose(ra[0], rb[0])


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: optim.Adam(p, lr=0.01),
    lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
])
def test_state_dict_resume_is_exact(make, tmp_path):
    straight = make_params(3)
    expected = run(make(straight), straight, 6)
    first = make_params(3)
    opt = make(first)
    run(opt, first, 3)
    backend.save_npz(tmp_path / "opt.npz", opt.state_dict())
    saved = host(first)
    resumed = [nn.Parameter(tensor(s)) for s in saved]
    opt2 = make(resumed)
    opt2.load_state_dict(backend.load_npz(tmp_path / "opt.npz"))
    assert opt2.step_count == 3
    got = run(opt2, resumed, 3, start=3)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_optimizer_load_state_dict_checks_keys_and_shapes():
    params = make_params()
    opt = optim.Adam(params)
    run(opt, params, 1)
    state = opt.state_dict()
    state["exp_avg.0"] = np.zeros((9,))
    state["bogus.7"] = np.zeros(1)
    with pytest.raises(ValueError, match="exp_avg.0.*bogus.7|bogus.7.*exp_avg.0"):
        optim.Adam(make_params()).load_state_dict(state)


def test_clip_grad_norm_scales_to_max_norm():
    params = make_params()
    params[0].grad = backend.to_device(np.full((3, 2), 3.0))
    params[1].grad = backend.to_device(np.full((4,), 4.0))
    total = math.sqrt(6 * 9 + 4 * 16)
    assert optim.clip_grad_norm(params, 1.0) == pytest.approx(total)
    clipped = math.sqrt(sum(float((backend.to_host(p.grad) ** 2).sum()) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-5)
    assert optim.clip_grad_norm(params, 10.0) == pytest.approx(clipped)  # no change below max


def test_warmup_then_cosine():
    lrs = [optim.warmup_cosine(t, 1.0, total_steps=12, warmup_steps=4, min_lr=0.1)
           for t in range(14)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[12] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    opt = optim.SGD(make_params(), lr=2.0)
    sched = optim.WarmupCosine(opt, total_steps=10, warmup_steps=2)
    assert opt.lr == pytest.approx(1.0)
    sched.step()
    assert opt.lr == pytest.approx(2.0)
    sched2 = optim.WarmupCosine(optim.SGD(make_params(), lr=2.0), 10, 2)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.optimizer.lr == opt.lr


def test_ema_update_and_swap():
    params = make_params()
    start = host(params)
    ema = optim.EMA(params, decay=0.9)
    for p in params:
        p.data = p.data + 1.0
    ema.update()
    trained = host(params)
    with ema.swapped():
        for p, s in zip(params, start):
            np.testing.assert_allclose(backend.to_host(p.data), 0.9 * s + 0.1 * (s + 1.0))
    for p, t in zip(params, trained):
        np.testing.assert_array_equal(backend.to_host(p.data), t)
    with pytest.raises(RuntimeError):
        with ema.swapped():
            raise RuntimeError("sampling failed")
    np.testing.assert_array_equal(backend.to_host(params[0].data), trained[0])
    other = optim.EMA(make_params(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    np.testing.assert_array_equal(backend.to_host(other.shadow[1]),
                                  backend.to_host(ema.shadow[1]))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"decay": np.asarray(0.5)})


def test_training_reduces_loss():
    backend.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((64, 2)))
    y = tensor((x.numpy() ** 2).sum(1, keepdims=True))
    opt = optim.AdamW(model.parameters(), lr=0.02)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first
