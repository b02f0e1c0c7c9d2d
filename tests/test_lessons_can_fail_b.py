"""Every check can fail: the checks that guard the central formulas of lessons 08, 11 and 13,
run with a plausible wrong formula planted in their place, must raise.

A lesson's checks are functions (``check_*``) defined in the lesson and called by it.  The
tests load those functions without running the lesson: the lesson's import lines, its
function definitions and a few named assignments are executed in a fresh namespace, whose
globals are the lesson's.  A wrong formula is planted either in that namespace (the name the
lesson imported) or in the library module the sampler calls, with pytest's monkeypatch.  Each
test first runs the check with the library as it is (it must pass), then with the plant (it
must raise AssertionError): a check that cannot fail would be a defect.
"""
import ast
import math
import pathlib
import sys

import numpy
import pytest

from minidiff import backend
from minidiff.diffusion import NoiseSchedule
from minidiff.diffusion import reverse, samplers
from minidiff.diffusion.forward import q_posterior
from minidiff.tensor import Tensor

LESSONS = pathlib.Path(__file__).resolve().parent.parent / "lessons"


def load_checks(name: str, keep=()):
    """The namespace of lesson ``name`` holding its imports, its functions and the top-level
    assignments to the names in ``keep`` (in file order), without the rest of the lesson."""
    if str(LESSONS) not in sys.path:
        sys.path.insert(0, str(LESSONS))
    tree = ast.parse((LESSONS / name).read_text(encoding="utf-8"))
    body = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            body.append(node)
        elif isinstance(node, ast.Assign) and all(
                isinstance(name, ast.Name) and name.id in keep for target in node.targets
                for name in (target.elts if isinstance(target, ast.Tuple) else [target])):
            body.append(node)
    namespace = {"__name__": f"lesson_{name[:2]}"}
    exec(compile(ast.Module(body=body, type_ignores=[]), name, "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def lesson08():
    namespace = load_checks("08_sampling.py", keep=("np", "xp", "mu", "s_data"))
    namespace["schedule"] = NoiseSchedule.linear(1000)
    return namespace


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(1000)


def _host(a):
    return backend.to_host(backend.array_of(a))


def _column(array, t, like):
    """``array[t]`` shaped to broadcast against ``like`` (N, ...)."""
    xp = backend.array_module_of(like)
    return xp.asarray(array)[t].reshape((-1,) + (1,) * (like.ndim - 1))


# ------------------------------------------------------------------ lesson 08: (3.7) and sigma_t
def wrong_reverse(eps_rule="right", variance_rule="right"):
    """p_mean_variance with a planted error: ``eps_rule`` "no_sqrt" writes the noise's
    coefficient in (3.7) as beta_t / (1 - abar_t) (the square root forgotten); ``variance_rule``
    "beta" uses sigma_t^2 = beta_t where beta~_t is asked for, "3x" three times the standard
    deviation."""
    right = reverse.p_mean_variance

    def planted(schedule, eps_pred, x_t, t, variance="fixed_small", clip_x0=True):
        out = dict(right(schedule, eps_pred, x_t, t, variance=variance, clip_x0=clip_x0))
        x, eps = backend.array_of(x_t), backend.array_of(eps_pred)
        betas, abar = schedule.betas, schedule.alphas_cumprod
        beta, ab = _column(betas, t, x), _column(abar, t, x)
        xp = backend.array_module_of(x)
        if eps_rule == "no_sqrt":
            out["mean"] = (x - beta / (1.0 - ab) * eps) / xp.sqrt(1.0 - beta)
        if variance_rule == "beta":
            out["variance"] = beta + 0 * out["variance"]
        elif variance_rule == "3x":
            out["variance"] = 9.0 * out["variance"]
        if variance_rule != "right":
            out["log_variance"] = xp.log(xp.maximum(out["variance"], 1e-30))
        return out
    return planted


PLANTS_37 = {"eps coefficient without its square root": dict(eps_rule="no_sqrt"),
             "sigma_t^2 = beta_t for fixed_small": dict(variance_rule="beta"),
             "sigma_t three times too large": dict(variance_rule="3x")}


@pytest.mark.parametrize("plant", sorted(PLANTS_37))
def test_lesson08_reverse_step_check_fails(lesson08, schedule, monkeypatch, plant):
    lesson08["check_reverse_step"](schedule)
    monkeypatch.setitem(lesson08, "p_mean_variance", wrong_reverse(**PLANTS_37[plant]))
    with pytest.raises(AssertionError):
        lesson08["check_reverse_step"](schedule)


@pytest.mark.parametrize("plant", sorted(PLANTS_37))
def test_lesson08_algorithm2_check_fails(lesson08, schedule, monkeypatch, plant):
    """The library's ddpm_sample with the wrong reverse step leaves the hand-written chain."""
    lesson08["check_algorithm2"](schedule, n=300)
    monkeypatch.setattr(samplers, "p_mean_variance", wrong_reverse(**PLANTS_37[plant]))
    with pytest.raises(AssertionError):
        lesson08["check_algorithm2"](schedule, n=300)


def test_one_point_data_could_not_catch_a_wrong_step(schedule):
    """Why lesson 08 no longer checks Algorithm 2 on one data point (review H1): there the
    chain ends on x* even with the noise's coefficient multiplied by 1.7 and sigma_t tripled at
    every step t >= 2, because the last step's posterior mean is x* whatever x_1 is."""
    betas = _host(schedule.betas)
    abar = numpy.cumprod(1.0 - betas)
    rng = numpy.random.default_rng(0)
    x_star = numpy.array([0.5, -0.25])
    x = rng.standard_normal((64, 2))
    for index in reversed(range(len(betas))):
        eps = (x - math.sqrt(abar[index]) * x_star) / math.sqrt(1.0 - abar[index])
        sigma = 3.0 * math.sqrt(betas[index]) if index > 0 else 0.0
        wrong = 1.7 if index > 0 else 1.0
        x = (x - wrong * betas[index] / math.sqrt(1.0 - abar[index]) * eps) \
            / math.sqrt(1.0 - betas[index]) + sigma * rng.standard_normal(x.shape)
        if index == 1:   # x_1: far from x* ...
            assert numpy.abs(x - x_star).max() > 0.01
    assert numpy.abs(x - x_star).max() < 1e-6     # ... and yet the end is exact


# ------------------------------------------------------------------ lesson 08: DDIM (8.4)-(8.7)
def wrong_ddim_step(sigma_rule="right", complement_rule="right"):
    """ddim_step (8.5)-(8.6) with a planted error: ``sigma_rule`` "no_ratio" drops the factor
    sqrt((1 - abar_s) / (1 - abar_t)) (so eta = 1 gives beta_t, not beta~_t), "half" halves
    sigma; ``complement_rule``
    "no_sigma" writes the noise's coefficient as sqrt(1 - abar_s), forgetting - sigma^2."""
    def planted(schedule, eps_pred, x_t, t, t_prev, eta=0.0, noise=None, clip_x0=False):
        eps = backend.array_of(eps_pred)[:, :x_t.shape[1]]
        abar_t = float(schedule.alphas_cumprod[t])
        abar_s = 1.0 if t_prev < 0 else float(schedule.alphas_cumprod[t_prev])
        x0_hat = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
        ratio = 1.0 if sigma_rule == "no_ratio" else (1.0 - abar_s) / (1.0 - abar_t)
        sigma2 = eta ** 2 * ratio * (1.0 - abar_t / abar_s) * (0.25 if sigma_rule == "half" else 1.0)
        complement = 1.0 - abar_s - (0.0 if complement_rule == "no_sigma" else sigma2)
        mean = math.sqrt(abar_s) * x0_hat + math.sqrt(max(complement, 0.0)) * eps
        if sigma2 > 0:
            z = backend.randn(*x_t.shape, dtype=x_t.dtype) if noise is None \
                else backend.array_of(noise)
            return mean + math.sqrt(sigma2) * z, mean, sigma2
        return mean, mean, sigma2
    return planted


def test_lesson08_ddim_checks_pass_with_the_library(lesson08, schedule):
    lesson08["check_ddim_marginals"](schedule, n=50_000)
    lesson08["check_ddim_sigma"](schedule)


@pytest.mark.parametrize("rule", ["no_ratio", "half"])
def test_lesson08_ddim_sigma_check_fails(lesson08, schedule, monkeypatch, rule):
    monkeypatch.setitem(lesson08, "ddim_step", wrong_ddim_step(sigma_rule=rule))
    with pytest.raises(AssertionError):
        lesson08["check_ddim_sigma"](schedule)


def test_lesson08_ddim_marginal_check_fails(lesson08, schedule, monkeypatch):
    monkeypatch.setitem(lesson08, "ddim_step", wrong_ddim_step(complement_rule="no_sigma"))
    with pytest.raises(AssertionError):
        lesson08["check_ddim_marginals"](schedule, n=50_000)


def test_lesson08_ddim_marginal_check_is_blind_to_sigma_alone(lesson08, schedule, monkeypatch):
    """(8.4) keeps the marginals for every sigma: a wrong sigma with its matching complement
    passes the marginal check, which is why check_ddim_sigma exists beside it."""
    monkeypatch.setitem(lesson08, "ddim_step", wrong_ddim_step(sigma_rule="half"))
    lesson08["check_ddim_marginals"](schedule, n=50_000)
    with pytest.raises(AssertionError):
        lesson08["check_ddim_sigma"](schedule)


def _mixture_data(lesson08, schedule):
    from minidiff.diffusion.oracles import GaussianMixture
    mixture = GaussianMixture([[-0.5], [0.1], [0.6]], [0.1, 0.15, 0.08], [0.2, 0.3, 0.5])
    backend.manual_seed(4)
    x0 = backend.array_of(mixture.sample(64)[0]).astype("float64")
    return mixture.model(schedule), x0


def test_lesson08_inversion_check_fails(lesson08, schedule, monkeypatch):
    """ddim_invert with the x_0 guess taken at the target level t instead of s."""
    model, x0 = _mixture_data(lesson08, schedule)
    lesson08["check_ddim_inversion"](schedule, model, x0)

    def planted(eps_model, schedule, x0, steps=None):
        xp = backend.array_module_of(x0)
        kept = samplers.space_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)
        x = x0
        for s, t in zip([-1] + kept[:-1], kept):
            eps = backend.array_of(eps_model(Tensor(x), xp.full((x.shape[0],), max(s, 0))))
            abar_t = float(schedule.alphas_cumprod[t])
            x0_hat = (x - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)     # wrong level
            x = math.sqrt(abar_t) * x0_hat + math.sqrt(1.0 - abar_t) * eps
        return x
    monkeypatch.setitem(lesson08, "ddim_invert", planted)
    with pytest.raises(AssertionError):
        lesson08["check_ddim_inversion"](schedule, model, x0)


def test_lesson08_respacing_check_fails(lesson08, schedule, monkeypatch):
    """respace with the original betas taken at the kept steps (the natural wrong guess)."""
    lesson08["check_respacing"](schedule, 10, n=50_000)

    def planted(schedule, use_timesteps):
        kept = sorted(int(t) for t in use_timesteps)
        out = NoiseSchedule.from_betas(_host(schedule.betas)[kept])
        out.timestep_map = backend.xp().asarray(kept, dtype=backend.xp().int64)
        return out
    monkeypatch.setitem(lesson08, "respace", planted)
    with pytest.raises(AssertionError):
        lesson08["check_respacing"](schedule, 10, n=50_000)


def test_lesson08_respacing_marginal_check_fails_alone(lesson08, schedule, monkeypatch):
    """The Monte Carlo half of check_respacing catches a wrong posterior on the respaced
    schedule even when its betas are right: q_posterior's x_t coefficient planted without
    sqrt(alpha_t)."""
    def planted(schedule, x0, x_t, t):
        mean, var, log_var = q_posterior(schedule, x0, x_t, t)
        alpha = _column(schedule.alphas, t, backend.array_of(x_t))
        coef2 = _column(schedule.posterior_mean_coef2, t, backend.array_of(x_t))
        return mean + (coef2 / backend.xp().sqrt(alpha) - coef2) * x_t, var, log_var
    monkeypatch.setattr(reverse, "q_posterior", planted)
    with pytest.raises(AssertionError):
        lesson08["check_respacing"](schedule, 10, n=50_000)


# ------------------------------------------------------------------ lesson 11: guidance (11.4)
@pytest.fixture(scope="module")
def lesson11():
    return load_checks("11_conditioning.py", keep=("np", "schedule", "abar", "means", "std",
                                                     "mixture", "component"))


def test_lesson11_guidance_check_fails_with_the_other_convention(lesson11, monkeypatch):
    """(11.4) with Ho & Salimans' w used as if it were s: eps_c + s (eps_c - eps_u), i.e.
    s + 1 in minidiff's convention.  The check at s = 0 and 3 must fail."""
    from minidiff.diffusion.guidance import guided as right
    lesson11["check_guidance"]()

    def planted(eps_model, cond, uncond, scale):
        return right(eps_model, cond, uncond, scale + 1.0)
    monkeypatch.setitem(lesson11, "guided", planted)
    with pytest.raises(AssertionError):
        lesson11["check_guidance"]()


def test_lesson11_guidance_check_fails_on_the_wrong_half(lesson11, monkeypatch):
    """(11.4) with the halves of the doubled batch swapped (cond taken as uncond)."""
    from minidiff.diffusion.guidance import guided as right

    def planted(eps_model, cond, uncond, scale):
        return right(eps_model, uncond, cond, scale)
    monkeypatch.setitem(lesson11, "guided", planted)
    with pytest.raises(AssertionError):
        lesson11["check_guidance"]()


@pytest.fixture(scope="module")
def concat_stand_in(tmp_path_factory):
    """A tiny concat-conditioned pixel model trained for two steps (as lesson 11's --quick)."""
    from tests.tiny_models import train_tiny
    return train_tiny(tmp_path_factory.mktemp("concat"), "concat")


@pytest.mark.parametrize("plant", ["w as s", "image ignored"])
def test_lesson11_image_guidance_check_fails_on_a_wrong_formula(lesson11, monkeypatch,
                                                                concat_stand_in, plant):
    """(11.10) with Ho & Salimans' w used as s (s + 1 in minidiff's convention), or with the
    guidance dropped (the plain conditional model, as if "nothing known" still saw the
    image): the check must fail on both, and pass on the library."""
    right = lesson11["load_inpainter"]
    assert lesson11["check_image_guidance"](concat_stand_in) > 1e-3

    def planted(path, *args, image_guidance=None, **kwargs):
        if image_guidance is not None:
            image_guidance = image_guidance + 1.0 if plant == "w as s" else None
        return right(path, *args, image_guidance=image_guidance, **kwargs)
    monkeypatch.setitem(lesson11, "load_inpainter", planted)
    with pytest.raises(AssertionError):
        lesson11["check_image_guidance"](concat_stand_in)


# ------------------------------------------------------------------ lesson 13: lambda_t (13.5)
@pytest.fixture(scope="module")
def lesson13():
    return load_checks("13_the_claim.py", keep=("np",))


def _stand_in():
    from minidiff.models.unet import UNet
    backend.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), image_size=8, groups=4).eval()
    x0 = backend.to_device(numpy.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)))
    return model, NoiseSchedule.linear(100), x0


@pytest.mark.parametrize("plant", ["without the 2", "sigma_t^2 = beta_t"])
def test_lesson13_lambda_check_fails(lesson13, monkeypatch, plant):
    """(13.5) with a planted wrong weight: lambda_t without the 2 of the KL's 1 / (2 sigma^2),
    or with sigma_t^2 = beta_t where the bound uses beta~_t."""
    model, schedule, x0 = _stand_in()
    lesson13["check_lambda"](schedule, model, x0, [1, 2, 10, 50, 99])
    right = lesson13["weights"]

    def planted(schedule):
        lam = right(schedule)
        if plant == "without the 2":
            return 2.0 * lam
        betas, post = _host(schedule.betas), _host(schedule.posterior_variance)
        lam = lam.copy()
        lam[1:] *= post[1:] / betas[1:]          # beta_t^2 / (2 beta_t ...) for t >= 1
        return lam
    monkeypatch.setitem(lesson13, "weights", planted)
    with pytest.raises(AssertionError):
        lesson13["check_lambda"](schedule, model, x0, [1, 2, 10, 50, 99])


def test_lesson13_hybrid_check_fails_without_the_stop_gradient(lesson13, monkeypatch):
    """(13.6) with the mean no longer detached inside L_vlb: the bound's gradient reaches the
    mean channel and the lesson's check must fail."""
    from minidiff.diffusion import training
    schedule = NoiseSchedule.linear(100)
    x0 = backend.to_device(numpy.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)))
    lesson13["check_hybrid_stop_gradient"](schedule, x0, 10)
    right = training._bound_bits

    def planted(*args, frozen_mean):
        return right(*args, frozen_mean=False)
    monkeypatch.setattr(training, "_bound_bits", planted)
    with pytest.raises(AssertionError):
        lesson13["check_hybrid_stop_gradient"](schedule, x0, 10)


@pytest.mark.parametrize("plant", ["keeps the first losses", "weights 1 / p"])
def test_lesson13_loss_sampler_check_fails(lesson13, monkeypatch, plant):
    """LossSecondMomentSampler with a planted error: a history that stops at its first
    ``history`` losses instead of keeping the last ones, or weights 1 / p_t without the T."""
    from minidiff.diffusion.resample import LossSecondMomentSampler
    lesson13["check_loss_sampler"](draws=20_000)

    class Planted(LossSecondMomentSampler):
        def update(self, t, losses):
            if plant == "keeps the first losses":
                t, losses = numpy.asarray(_host(t)), numpy.asarray(_host(losses), float)
                fresh = self.counts[t] < self.history_size
                super().update(t[fresh], losses[fresh])
                self.counts += numpy.bincount(t[~fresh], minlength=self.num_timesteps)
            else:
                super().update(t, losses)

        def draw(self, n):
            t, weights = super().draw(n)
            if plant == "weights 1 / p":
                weights = weights * self.num_timesteps
            return t, weights
    monkeypatch.setitem(lesson13, "LossSecondMomentSampler", Planted)
    with pytest.raises(AssertionError):
        lesson13["check_loss_sampler"](draws=20_000)


# ------------------------------------------------------------------ lesson 07: E[eps | x_t]
def test_lesson07_minimiser_check_fails_for_a_wrong_conditional_mean(monkeypatch):
    """The exact eps of the mixture read at a later t (t + 100): not E[eps | x_t], and the
    cross term of lesson 07's split no longer vanishes."""
    from minidiff.diffusion.oracles import GaussianMixture
    lesson07 = load_checks("07_training.py", keep=("np",))
    schedule = NoiseSchedule.linear(1000)
    mixture = GaussianMixture([[-0.5], [0.1], [0.6]], [0.1, 0.15, 0.08], [0.2, 0.3, 0.5])
    backend.manual_seed(0)
    lesson07["check_minimiser"](schedule, mixture, 50_000)

    class Planted(GaussianMixture):
        def eps(self, schedule, x_t, t):
            return super().eps(schedule, x_t, t + 100)
    planted = Planted([[-0.5], [0.1], [0.6]], [0.1, 0.15, 0.08], [0.2, 0.3, 0.5])
    with pytest.raises(AssertionError):
        lesson07["check_minimiser"](schedule, planted, 50_000)
