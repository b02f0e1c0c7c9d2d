"""Every check can fail: lessons 00-06 catch a planted wrong formula.

A check that cannot fail proves nothing.  For the checks that guard the central formulas of
lessons 00-06, each case below plants one plausible mistake in the library (a wrong posterior
coefficient, a wrong variance, the bound without a term, a Min-SNR weight for the wrong
target, ...), runs the lesson with ``--quick`` in this process, and expects it to stop with an
``AssertionError`` whose message names the equation the mistake breaks.  The lessons' central
assertions carry that equation number as their message, so a planted mistake caught by some
unrelated assertion would not count.

The controls run each lesson unplanted through the same in-process runner, so a failure under
a plant is the plant's doing.
"""
import math
import pathlib
import runpy
import sys

import pytest

import minidiff as md
import minidiff.diffusion as diffusion
import minidiff.diffusion.losses as losses
import minidiff.diffusion.reverse as reverse
import minidiff.diffusion.vlb as vlb
import minidiff.models as models
import minidiff.nn.functional as F
import minidiff.tensor  # noqa: F401  (the module; minidiff.tensor the attribute is a function)
from minidiff import backend
from minidiff.diffusion import NoiseSchedule

tensor_module = sys.modules["minidiff.tensor"]

LESSONS = pathlib.Path(__file__).resolve().parent.parent / "lessons"
NAMES = {"00": "00_autograd.py", "01": "01_forward_process.py", "02": "02_closed_form.py",
         "03": "03_reverse_process.py", "04": "04_loss.py", "05": "05_layers.py",
         "06": "06_unet.py"}


def run_lesson(number, tmp_path, monkeypatch):
    """Run lesson ``number`` with --quick in this process (so that monkeypatches apply)."""
    path = LESSONS / NAMES[number]
    monkeypatch.setattr(sys, "argv", [str(path), "--quick", "--out", str(tmp_path)])
    monkeypatch.syspath_prepend(str(LESSONS))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        md.set_default_dtype("float32")


def corrupt_schedule(monkeypatch, change):
    """Every NoiseSchedule built from now on passes through ``change(schedule, xp)``."""
    build = NoiseSchedule._build

    def planted(self, *args, **kwargs):
        build(self, *args, **kwargs)
        change(self, backend.array_module_of(self.betas))
    monkeypatch.setattr(NoiseSchedule, "_build", planted)


# ------------------------------------------------------------------------------- plants
def tanh_without_inner_derivative(monkeypatch):
    """tanh whose backward forgets its local derivative 1 - tanh^2: (0.1)."""
    def tanh(x):
        x = x if isinstance(x, md.Tensor) else md.tensor(x)
        out = backend.array_module_of(x.data).tanh(x.data)
        return md.Tensor._make(out, (x,), lambda g: (g,), "tanh")
    monkeypatch.setattr(md, "tanh", tanh)


def broadcast_gradient_averaged(monkeypatch):
    """Broadcast axes averaged instead of summed in backward: (0.3)."""
    def unbroadcast(grad, shape):
        if grad.shape == tuple(shape):
            return grad
        extra = grad.ndim - len(shape)
        if extra > 0:
            grad = grad.mean(axis=tuple(range(extra)))
        axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
        return grad.mean(axis=axes, keepdims=True) if axes else grad
    monkeypatch.setattr(tensor_module, "unbroadcast", unbroadcast)


def noise_scale_without_sqrt(monkeypatch):
    """q_sample with (1 - abar_t) eps instead of sqrt(1 - abar_t) eps: (1.2) at step 1."""
    def change(s, xp):
        s.sqrt_one_minus_alphas_cumprod = 1.0 - s.alphas_cumprod
    corrupt_schedule(monkeypatch, change)


def mean_without_sqrt(monkeypatch):
    """q_mean_variance with the mean abar_t x_0 instead of sqrt(abar_t) x_0: (1.3)."""
    q_mean_variance = diffusion.q_mean_variance

    def planted(schedule, x0, t):
        mean, variance, log_variance = q_mean_variance(schedule, x0, t)
        return mean * diffusion.forward.extract(schedule.sqrt_alphas_cumprod, t, x0), \
            variance, log_variance
    monkeypatch.setattr(diffusion, "q_mean_variance", planted)


def gaussian_kl_without_half(monkeypatch):
    """The Gaussian KL (4.3) without its factor 1/2, inside prior_term: (1.4)."""
    kl = losses.normal_kl
    monkeypatch.setattr(vlb, "normal_kl", lambda *a: 2.0 * kl(*a))


def v_of_the_other_sign(monkeypatch):
    """v = sqrt(1 - abar) x_0 - sqrt(abar) eps, consistently in all three conversions of
    (2.6): lengths and round trips still hold; only d x_t / d phi catches it."""
    predict_v, from_v, eps_from_v = (diffusion.predict_v, diffusion.predict_x0_from_v,
                                     diffusion.predict_eps_from_v)
    monkeypatch.setattr(diffusion, "predict_v", lambda s, x0, t, e: -1.0 * predict_v(s, x0, t, e))
    monkeypatch.setattr(diffusion, "predict_x0_from_v", lambda s, x, t, v: from_v(s, x, t, -v))
    monkeypatch.setattr(diffusion, "predict_eps_from_v",
                        lambda s, x, t, v: eps_from_v(s, x, t, -v))


def snr_with_sqrt(monkeypatch):
    """snr_t = sqrt(abar_t) / (1 - abar_t): (2.7)."""
    def change(s, xp):
        s.snr = xp.sqrt(s.alphas_cumprod) / (1.0 - s.alphas_cumprod)
    corrupt_schedule(monkeypatch, change)


def scaled_linear_in_beta(monkeypatch):
    """scaled_linear with beta (not sqrt(beta)) evenly spaced: (2.10)."""
    monkeypatch.setattr(NoiseSchedule, "scaled_linear", classmethod(
        lambda cls, T=1000, beta_start=0.00085, beta_end=0.012:
        cls.from_betas(backend.host.linspace(beta_start, beta_end, T), "scaled_linear")))


def posterior_coefficient_off(monkeypatch):
    """posterior_mean_coef1 (the x_0 coefficient of (3.4)) 10% too large: (3.2)/(3.4)."""
    def change(s, xp):
        s.posterior_mean_coef1 = 1.1 * s.posterior_mean_coef1
    corrupt_schedule(monkeypatch, change)


def posterior_variance_is_beta(monkeypatch):
    """beta~_t replaced by beta_t (a wrong sigma of the posterior): (3.2)/(3.3)."""
    def change(s, xp):
        s.posterior_variance = s.betas.copy()
    corrupt_schedule(monkeypatch, change)


def eps_coefficient_off(monkeypatch):
    """x_0 from eps (2.5) with sqrt(1/abar - 1) 10% too large, so (3.7)'s eps coefficient is
    wrong while the mean stays linear in x_0 (what H3 said the old check could not see)."""
    def change(s, xp):
        s.sqrt_recipm1_alphas_cumprod = 1.1 * s.sqrt_recipm1_alphas_cumprod
    corrupt_schedule(monkeypatch, change)


def fixed_large_is_beta_tilde(monkeypatch):
    """fixed_large using beta~_t (the fixed_small variance) instead of beta_t: (3.6)."""
    monkeypatch.setattr(reverse, "_fixed_large", lambda schedule: (
        schedule.posterior_variance, schedule.posterior_log_variance_clipped))


def kl_without_half_everywhere(monkeypatch):
    """The Gaussian KL (4.3) twice too large, for the lesson and for the bound: (4.3)."""
    kl = losses.normal_kl
    monkeypatch.setattr(diffusion, "normal_kl", lambda *a: 2.0 * kl(*a))
    monkeypatch.setattr(vlb, "normal_kl", lambda *a: 2.0 * kl(*a))


def bound_without_its_weight(monkeypatch):
    """Each KL term L_t replaced by the unweighted noise error ||eps - eps_theta||^2, the
    bound without lambda_t: (4.5)."""
    term_at = vlb.vlb_term_at

    def unweighted(schedule, eps_model, x0, t, noise=None, variance="fixed_small",
                   clip_x0=False):
        xp = backend.array_module_of(vlb.raw(x0))
        t = xp.asarray(t, dtype=xp.int64).reshape(-1)
        if noise is None:
            noise = backend.randn(*x0.shape, dtype=x0.dtype)
        x_t = diffusion.q_sample(schedule, vlb.raw(x0), t, noise)
        error = vlb.raw(eps_model(md.Tensor(x_t), t)) - noise
        mse = (error * error).reshape(error.shape[0], -1).mean(axis=1)
        exact = term_at(schedule, eps_model, x0, t, noise, variance, clip_x0)
        return xp.where(t == 0, exact, mse)
    monkeypatch.setattr(diffusion, "vlb_term_at", unweighted)
    monkeypatch.setattr(vlb, "vlb_term_at", unweighted)


def bound_without_decoder(monkeypatch):
    """vlb_terms that leaves out L_0 (the decoder column is zero): only (4.2) = (4.1) sees it."""
    terms = vlb.vlb_terms

    def planted(*args, **kwargs):
        out = terms(*args, **kwargs)
        out["terms"][:, 0] = 0.0
        out["total"] = out["prior"] + out["terms"].sum(axis=1)
        return out
    monkeypatch.setattr(diffusion, "vlb_terms", planted)


def min_snr_v_weight_of_eps(monkeypatch):
    """Min-SNR's v weight taken as the eps weight min(snr, gamma)/snr: (4.9)."""
    weight = losses.min_snr_weight
    monkeypatch.setattr(losses, "min_snr_weight", lambda s, t, target="eps", gamma=5.0, like=None:
                        weight(s, t, "eps" if target == "v" else target, gamma, like))


def x0_from_v_swapped(monkeypatch):
    """x_0 = sqrt(1 - abar) x_t - sqrt(abar) v (the coefficients of (2.6) swapped): (4.12)."""
    def planted(s, x_t, t, v):
        a = diffusion.forward.extract(s.sqrt_alphas_cumprod, t, x_t)
        b = diffusion.forward.extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)
        return b * x_t - a * v
    monkeypatch.setattr(diffusion, "predict_x0_from_v", planted)


def col2im_flipped(monkeypatch):
    """col2im scattering each column with the kernel flipped: not im2col's adjoint, (5.4)."""
    col2im = F.col2im

    def planted(cols, shape, kernel, stride=1, padding=0, overwrite_cols=False):
        k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
        c = shape[1]
        flipped = cols.reshape(c, k[0], k[1], -1)[:, ::-1, ::-1].reshape(cols.shape)
        return col2im(backend.array_module_of(cols).ascontiguousarray(flipped), shape, kernel,
                      stride, padding)
    monkeypatch.setattr(F, "col2im", planted)


def group_norm_per_channel(monkeypatch):
    """Group norm that normalizes each channel alone: (5.5)'s moments still hold for every
    group, the backward formula (5.6) written for groups does not."""
    group_norm = F.group_norm

    def planted(x, num_groups, weight=None, bias=None, eps=1e-5):
        return group_norm(x, x.shape[1], weight, bias, eps)
    monkeypatch.setattr(F, "group_norm", planted)


def attention_without_scale(monkeypatch):
    """Attention without the 1/sqrt(d) of (5.7) (its gradients stay consistent)."""
    attention = F.scaled_dot_product_attention

    def planted(q, k, v, mask=None):
        return attention(q * math.sqrt(q.shape[-1]), k, v, mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", planted)


def embedding_frequencies_over_d(monkeypatch):
    """Time embedding with omega_i = exp(-ln(10000) i / d) instead of i / (d/2): (6.1)."""
    def planted(t, dim):
        xp = backend.xp()
        t = xp.asarray(backend.to_device(t) if backend.is_array(t) else t).reshape(-1)
        omega = xp.exp(-math.log(10000.0) * xp.arange(dim // 2, dtype=xp.float64) / dim)
        angles = t.astype(xp.float64)[:, None] * omega[None, :]
        return md.Tensor(xp.concatenate([xp.cos(angles), xp.sin(angles)], axis=1).astype(
            backend.default_dtype()))
    monkeypatch.setattr(models, "timestep_embedding", planted)


def patch_row_and_column_swapped(monkeypatch):
    """space_to_depth putting patch row j, column i in channel c p^2 + i p + j: (6.2)."""
    to_depth = F.space_to_depth

    def planted(x, patch):
        return to_depth(x.transpose(0, 1, 3, 2), patch).transpose(0, 1, 3, 2)
    monkeypatch.setattr(F, "space_to_depth", planted)


#: (lesson, plant, what the AssertionError's message must name)
PLANTS = [
    ("00", tanh_without_inner_derivative, ("(0.1)",)),
    ("00", broadcast_gradient_averaged, ("(0.3)",)),
    ("01", noise_scale_without_sqrt, ("(1.2)",)),
    ("01", mean_without_sqrt, ("(1.3)",)),
    ("01", gaussian_kl_without_half, ("(1.4)",)),
    ("02", noise_scale_without_sqrt, ("(2.4)",)),
    ("02", v_of_the_other_sign, ("(2.6): v = d x_t / d phi",)),
    ("02", snr_with_sqrt, ("(2.7)",)),
    ("02", scaled_linear_in_beta, ("(2.10)",)),
    ("03", posterior_coefficient_off, ("(3.2)", "(3.4)")),
    ("03", posterior_variance_is_beta, ("(3.2)", "(3.3)")),
    ("03", eps_coefficient_off, ("(3.7)",)),
    ("03", fixed_large_is_beta_tilde, ("(3.6)",)),
    ("04", kl_without_half_everywhere, ("(4.3)",)),
    ("04", bound_without_its_weight, ("(4.5)",)),
    ("04", bound_without_decoder, ("(4.2) = (4.1)",)),
    ("04", min_snr_v_weight_of_eps, ("(4.9), target v",)),
    ("04", x0_from_v_swapped, ("(4.12), v",)),
    ("05", col2im_flipped, ("(5.4)",)),
    ("05", group_norm_per_channel, ("(5.6)",)),
    ("05", attention_without_scale, ("(5.7)",)),
    ("06", embedding_frequencies_over_d, ("(6.1)",)),
    ("06", patch_row_and_column_swapped, ("(6.2)",)),
]


@pytest.mark.parametrize("number", sorted(NAMES))
def test_lesson_passes_unplanted_in_process(number, tmp_path, monkeypatch, capsys):
    run_lesson(number, tmp_path, monkeypatch)
    assert f"lesson {number}: all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("number, plant, names", PLANTS,
                         ids=[f"{n}-{p.__name__}" for n, p, _ in PLANTS])
def test_lesson_catches_planted_formula(number, plant, names, tmp_path, monkeypatch):
    plant(monkeypatch)
    with pytest.raises(AssertionError) as caught:
        run_lesson(number, tmp_path, monkeypatch)
    message = str(caught.value)
    assert any(name in message for name in names), \
        f"lesson {number} failed, but not at the check of {names}: {message!r}"
