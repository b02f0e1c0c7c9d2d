"""Mutation testing for minidiff: plant one small, plausible bug at a time and check that a fast
subset of the tests fails.  Not part of the default test run (it takes minutes).

    python3 .ci/mutation.py                 # every mutant, report killed/survived and a score
    python3 .ci/mutation.py --list          # the mutants, numbered, without running anything
    python3 .ci/mutation.py --only 3 17     # just those
    python3 .ci/mutation.py --root DIR      # mutate another checkout (e.g. an older commit)
    python3 .ci/mutation.py --only 18 --tests tests/test_diffusion_oracles.py   # one file

Each mutant is an exact string in one file and what replaces it: a sign flip, a dropped term, an
off-by-one index, swapped arguments, a removed call.  The string must occur exactly once (a
mutant that no longer matches the code is reported as STALE, not silently skipped).  The tree is
copied once to a temporary folder; each mutant is applied there, the tests run with ``-x -q``
(stop at the first failure), and the file is restored in a ``finally``: the checkout itself is
never modified.  A mutant is *killed* when pytest fails (or runs past ``--timeout``), *survives*
when it passes.  Score = killed / (killed + survived).

Each mutant runs the unit tests of its package and of the code that calls it (TESTS below;
files that do not exist in the checkout are left out); the lessons are not run (minutes each).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

#: the tests run against a mutant, by the longest matching path prefix: its package's unit tests
#: and those of the code that calls it (the training step's for training.py and forward.py,
#: the trainer's for the optimizers and the models)
DIFFUSION_TESTS = [
    "tests/test_diffusion_oracles.py", "tests/test_diffusion_bound.py",
    "tests/test_diffusion_forward.py", "tests/test_diffusion_losses.py",
    "tests/test_diffusion_posterior.py", "tests/test_diffusion_samplers.py",
    "tests/test_diffusion_schedule.py", "tests/test_diffusion_vlb.py",
]
TRAIN_TESTS = ["tests/test_optim.py", "tests/test_training_wiring.py", "tests/test_train.py"]
TESTS = {
    "minidiff/diffusion/": DIFFUSION_TESTS,
    "minidiff/diffusion/training.py": DIFFUSION_TESTS + ["tests/test_training_wiring.py"],
    "minidiff/diffusion/forward.py": DIFFUSION_TESTS + ["tests/test_training_wiring.py"],
    "minidiff/train/": TRAIN_TESTS,
    "minidiff/checkpoint.py": TRAIN_TESTS,
    "minidiff/optim/": TRAIN_TESTS,
    "minidiff/models/": ["tests/test_model_blocks.py", "tests/test_unet.py",
                         "tests/test_nn_modules.py", "tests/test_training_wiring.py",
                         "tests/test_train.py"],
}

D, T, M, O = "minidiff/diffusion/", "minidiff/train/", "minidiff/models/", "minidiff/optim/"

#: (file, exact original text, replacement, what a user would see)
MUTANTS = [
    # ---- schedule: the arrays everything else reads
    (D + "schedule.py", "abar_prev = host.append(1.0, abar[:-1])",
     "abar_prev = host.append(1.0, abar[1:])", "alphabar_{t-1} shifted the wrong way"),
    (D + "schedule.py", "self.posterior_mean_coef1 = dev(host_betas * host.sqrt(abar_prev)",
     "self.posterior_mean_coef1 = dev(host_betas * host.sqrt(abar)",
     "posterior coef1 with abar_t for abar_{t-1}"),
    (D + "schedule.py", "(1.0 - abar_prev) * host.sqrt(1.0 - host_betas)",
     "(1.0 - abar_prev) * (1.0 - host_betas)", "posterior coef2 without the sqrt"),
    (D + "schedule.py", "post_var = host_betas * (1.0 - abar_prev) / (1.0 - abar)",
     "post_var = host_betas * 1.0", "posterior variance = beta (fixed_small becomes large)"),
    (D + "schedule.py", "first = post_var[1] if", "first = host_betas[1] if",
     "clipped log-variance at index 0 from beta_2"),
    (D + "schedule.py", "return 0.5 * (-abar_T - math.log1p(-abar_T))",
     "return 0.5 * (abar_T - math.log1p(-abar_T))", "prior_kl sign flip"),
    (D + "schedule.py", "f = host.cos((steps + s) / (1.0 + s)", "f = host.cos((steps + s) / (1.0 - s)",
     "cosine schedule offset"),
    (D + "schedule.py", "self.snr = dev(abar / (1.0 - abar))", "self.snr = dev((1.0 - abar) / abar)",
     "snr inverted"),
    # ---- forward process and conversions
    (D + "forward.py", "* x0\n            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise",
     "* x0\n            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise",
     "q_sample subtracts the noise (target sign wrong)"),
    (D + "forward.py", "            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)",
     "            + extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)",
     "x0 from eps: sign flip"),
    (D + "forward.py", "            / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t))",
     "            * extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t))",
     "eps from x0: multiply for divide"),
    (D + "forward.py", "            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)",
     "            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)",
     "v target sign flip"),
    (D + "forward.py", "return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t\n"
     "            + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v)",
     "return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t\n"
     "            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)",
     "eps from v: coefficients swapped"),
    (D + "forward.py", 'if self.prediction == "v":\n            out = predict_eps_from_v',
     'if self.prediction == "v":\n            out = predict_eps_from_x0',
     "as_eps_model treats v as x0"),
    # ---- reverse step
    (D + "reverse.py", "if clip_x0:\n        pred_x0 = clip(pred_x0, -1.0, 1.0)",
     "if clip_x0:\n        pass", "clip_x0 ignored"),
    (D + "reverse.py", "variance[0] = schedule.posterior_variance[1]",
     "variance[0] = schedule.betas[0]", "fixed_large decoder width at index 0"),
    (D + "reverse.py", "var, log_var = extract(large, t, x_t), extract(log_large, t, x_t)",
     "var, log_var = extract(large, t, x_t), extract(schedule.posterior_log_variance_clipped, "
     "t, x_t)", "fixed_large samples with the fixed_small log-variance"),
    # ---- samplers
    (D + "samplers.py", 'x = out["mean"] + xp.exp(0.5 * out["log_variance"]) * z',
     'x = out["mean"] + xp.exp(out["log_variance"]) * z', "DDPM noise scaled by variance not std"),
    (D + "samplers.py", "        if index > 0:\n            z = backend.randn",
     "        if index > 1:\n            z = backend.randn", "DDPM: no noise at the last two steps"),
    (D + "samplers.py", "eps = _call(eps_model, x, tmap[t])", "eps = _call(eps_model, x, t)",
     "respaced DDPM calls the model with new, not original, timesteps"),
    (D + "samplers.py", "sigma2 = eta ** 2 * (1.0 - abar_s) / (1.0 - abar_t)",
     "sigma2 = eta ** 2 * (1.0 - abar_t) / (1.0 - abar_s)", "DDIM sigma ratio inverted"),
    (D + "samplers.py", "math.sqrt(max(1.0 - abar_s - sigma2, 0.0)) * eps_pred",
     "math.sqrt(max(1.0 - abar_s, 0.0)) * eps_pred", "DDIM direction term ignores sigma"),
    (D + "samplers.py", "        eps_pred = (x_t - math.sqrt(abar_t) * x0_hat) / math.sqrt(1.0 - abar_t)\n",
     "", "DDIM keeps the unclipped eps after clipping x0"),
    (D + "samplers.py", "t_prev = sequence[i + 1] if i + 1 < len(sequence) else -1",
     "t_prev = sequence[i + 1] if i + 1 < len(sequence) else 0",
     "DDIM stops at x_1, not x_0"),
    (D + "samplers.py", "        index = max(s, 0)\n", "        index = t\n",
     "DDIM inversion evaluates the model at the destination"),
    (D + "samplers.py", "kept = space_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)\n"
     "    x = backend.randn", "kept = space_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)[1:]\n"
     "    x = backend.randn", "DDIM drops its first kept step"),
    (D + "respace.py", "stride = (num_timesteps - 1) / (steps - 1)", "stride = num_timesteps / steps",
     "respacing misses the last step"),
    # ---- losses and the bound
    (D + "losses.py", "* exp(-1.0 * logvar2))", "* exp(-1.0 * logvar1))",
     "KL: mean term divided by the wrong variance"),
    (D + "losses.py", "0.5 * (-1.0 + logvar2 - logvar1", "0.5 * (-1.0 + logvar1 - logvar2",
     "KL: log-variance difference swapped"),
    (D + "losses.py", "        return clipped / (snr + 1.0)", "        return clipped / snr",
     "Min-SNR v weight"),
    (D + "losses.py", "upper = inv_stdv * (centered + 1.0 / 255.0)",
     "upper = inv_stdv * (centered + 2.0 / 255.0)", "decoder bin too wide"),
    (D + "losses.py", "x < -0.999, cdf_upper.clip(tiny, None).log()",
     "x < -0.999, mass.clip(tiny, None).log()", "decoder edge bin not opened"),
    (D + "vlb.py", "t = xp.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=xp.int64)",
     "t = xp.full((x0.shape[0],), schedule.num_timesteps - 2, dtype=xp.int64)",
     "prior term at T-1"),
    (D + "vlb.py", 'out = p_mean_variance(schedule, eps_pred, x_t, t, variance=variance, clip_x0=clip_x0)',
     'out = p_mean_variance(schedule, eps_pred, x_t, t, clip_x0=clip_x0)',
     "the bound ignores the variance choice"),
    (D + "vlb.py", 'x0, mean, 0.5 * log_variance))',
     'x0, mean, log_variance))', "decoder given log-variance as log-scale"),
    (D + "vlb.py", "per_item = prior_term(schedule, x0) + decoder + (T - 1) * acc / int(num_samples)",
     "per_item = prior_term(schedule, x0) + decoder + T * acc / int(num_samples)",
     "Monte-Carlo bits/dim: KL terms weighted T instead of T-1"),
    (D + "vlb.py", "per_item = prior_term(schedule, x0) + decoder + (T - 1) * acc / int(num_samples)",
     "per_item = decoder + (T - 1) * acc / int(num_samples)", "Monte-Carlo bits/dim without L_T"),
    (D + "vlb.py", "per_item = prior_term(schedule, x0) + decoder + (T - 1) * acc / int(num_samples)",
     "per_item = prior_term(schedule, x0) + (T - 1) * acc / int(num_samples)",
     "Monte-Carlo bits/dim without L_0"),
    # ---- training step (Algorithm 1)
    (D + "training.py", "backend.randint(0, schedule.num_timesteps, (n,))",
     "backend.randint(1, schedule.num_timesteps, (n,))", "t never 0 (step 1 never trained)"),
    (D + "training.py", "backend.randint(0, schedule.num_timesteps, (n,))",
     "backend.randint(0, schedule.num_timesteps - 1, (n,))", "t never T-1"),
    (D + "training.py", "noise = backend.randn(*x0.shape, dtype=x0.dtype)",
     "noise = 0.5 * backend.randn(*x0.shape, dtype=x0.dtype)", "noise variance 1/4"),
    (D + "training.py", '"v": lambda: predict_v(schedule, x0, t, noise)}',
     '"v": lambda: predict_v(schedule, noise, t, x0)}', "v target with x0 and eps swapped"),
    (D + "training.py", 'target = {"eps": lambda: noise, "x0": lambda: x0,',
     'target = {"eps": lambda: noise, "x0": lambda: x_t,', "x0 target is x_t"),
    # ---- trainer, optimizer wiring, checkpoints
    (T + "trainer.py", "        self.ema.update()\n", "", "EMA never updated"),
    (T + "trainer.py", "        self.scheduler.step()\n", "", "learning rate never scheduled"),
    (T + "trainer.py", "        self.optimizer.zero_grad()\n", "", "gradients accumulate"),
    (T + "trainer.py", 'norm = clip_grad_norm(self.model.parameters(), c["grad_clip"])',
     'norm = clip_grad_norm(self.model.parameters(), 1e30)', "gradient clipping never acts"),
    (T + "tasks.py", 'target_type=c["prediction"], t=t, part=part,',
     't=t, part=part,', "trainer always trains eps"),
    (T + "trainer.py", "return order[position * batch_size:(position + 1) * batch_size]",
     "return order[position:position + batch_size]", "overlapping batches"),
    ("minidiff/checkpoint.py", 'arrays = {f"ema.{k}": v for k, v in zip(model.state_dict(), ema.shadow)}',
     'arrays = {f"ema.{k}": v for k, v in model.state_dict().items()}',
     "exported EMA holds the raw weights"),
    (O + "ema.py", "            s *= self.decay\n", "            s *= 1.0 - self.decay\n",
     "EMA decay and weight swapped"),
    (O + "schedule.py", "return base_lr * (step + 1) / warmup_steps",
     "return base_lr * step / warmup_steps", "warm-up starts at lr 0 (off by one)"),
    (O + "schedule.py", "0.5 * (1.0 + math.cos(math.pi * u))", "0.5 * (1.0 + math.cos(0.5 * math.pi * u))",
     "cosine decays only half way"),
    (O + "schedule.py", "if total > max_norm:", "if total < max_norm:", "clipping inverted"),
    # ---- models
    (M + "embedding.py", "* xp.arange(half, dtype=xp.float64) / half)",
     "* xp.arange(half, dtype=xp.float64) / dim)", "embedding frequencies"),
    (M + "blocks.py", "        return self.skip(x) + h\n", "        return h\n",
     "ResBlock without its residual"),
    (M + "blocks.py", "h = h + self.emb_proj(F.silu(emb))", "h = h + self.emb_proj(F.silu(emb * 0.0))",
     "time embedding ignored"),
    (M + "blocks.py", "o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])",
     "o = F.scaled_dot_product_attention(qkv[0], qkv[0], qkv[2])", "attention keys are the queries"),
    (M + "blocks.py", "        return x + self.proj_out(o)\n", "        return self.proj_out(o)\n",
     "attention without its residual"),
    (M + "unet.py", "return self.conv_out(F.silu(self.norm_out(h)))",
     "return self.conv_out(self.norm_out(h))", "no activation before the output conv"),
]


def copy_tree(root: str, dest: str) -> None:
    """What the tests need: the package, the tests, the lessons and config; data by link."""
    for name in ("minidiff", "tests", "lessons"):
        if os.path.isdir(os.path.join(root, name)):
            shutil.copytree(os.path.join(root, name), os.path.join(dest, name),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if os.path.exists(os.path.join(root, name)):
            shutil.copy(os.path.join(root, name), dest)
    if os.path.isdir(os.path.join(root, "data")):
        os.symlink(os.path.abspath(os.path.join(root, "data")), os.path.join(dest, "data"))
    # in the copy only: hypothesis reports the first failing example without shrinking it (a
    # killed mutant needs no minimal example, and shrinking can take minutes)
    with open(os.path.join(dest, "tests", "conftest.py"), "a", encoding="utf-8") as f:
        f.write("\n\nfrom hypothesis import Phase  # noqa: E402\n"
                "settings.register_profile('mutation', parent=settings.get_profile('ci'),\n"
                "                          phases=[Phase.explicit, Phase.reuse, Phase.generate])\n"
                "settings.load_profile('mutation')\n")


def run_tests(tree: str, tests: list[str], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    env.pop("MINIDIFF_BACKEND", None)
    start = time.time()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                 "no:cacheprovider", *tests], cwd=tree, env=env,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.time() - start
    if result.returncode == 0:
        return "SURVIVED", time.time() - start
    if result.returncode in (1, 2):   # a failure, or a collection error the mutant caused
        failed = [line.split()[1] for line in result.stdout.splitlines()
                  if line.startswith(("FAILED ", "ERROR "))]
        return "killed" + (f" by {failed[0]}" if failed else ""), time.time() - start
    return f"error (pytest exit {result.returncode})", time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                        help="the checkout to mutate (default: this one)")
    parser.add_argument("--only", type=int, nargs="*", help="mutant numbers to run")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds per mutant (a timeout counts as killed, and is reported)")
    parser.add_argument("--tests", nargs="*", help="test files to run instead of TESTS")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    chosen = [(i, m) for i, m in enumerate(MUTANTS, 1) if not args.only or i in args.only]
    if args.list:
        for i, (path, old, _, what) in chosen:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                matches = f.read().count(old)
            print(f"{i:3d}  {path:38s} {what}" + ("" if matches == 1 else f"  STALE ({matches})"))
        return 0
    def tests_for(path):
        listed = args.tests or TESTS[max((k for k in TESTS if path.startswith(k)), key=len)]
        return [t for t in listed if os.path.exists(os.path.join(root, t))]

    every = sorted({t for _, (path, _, _, _) in chosen for t in tests_for(path)})
    print(f"{len(chosen)} mutants; tests: {' '.join(every)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="minidiff-mutants-") as tree:
        copy_tree(root, tree)
        baseline, seconds = run_tests(tree, every, args.timeout)
        print(f"unmutated tree: {'passes' if baseline == 'SURVIVED' else baseline} "
              f"({seconds:.0f} s)", flush=True)
        if baseline != "SURVIVED":
            print("the tests must pass before mutating", file=sys.stderr)
            return 2
        outcome = {}
        for i, (path, old, new, what) in chosen:
            target = os.path.join(tree, path)
            with open(target, encoding="utf-8") as f:
                original = f.read()
            if original.count(old) != 1:
                outcome[i] = "STALE"
                print(f"{i:3d} STALE ({original.count(old)} matches)  {path}: {what}", flush=True)
                continue
            try:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(original.replace(old, new))
                outcome[i], seconds = run_tests(tree, tests_for(path), args.timeout)
            finally:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(original)
            print(f"{i:3d} {outcome[i].split(' by ')[0]:9s} {seconds:5.0f} s  {path}: {what}"
                  + (f"  [{outcome[i].split(' by ')[1]}]" if " by " in outcome[i] else ""),
                  flush=True)
    killed = sum(v.startswith("killed") for v in outcome.values())
    survived = [i for i, v in outcome.items() if v == "SURVIVED"]
    other = [i for i, v in outcome.items() if not v.startswith("killed") and v != "SURVIVED"]
    score = killed / max(1, killed + len(survived))
    print(f"\nmutation score: {killed}/{killed + len(survived)} killed = {score:.0%}"
          + (f"; stale or errors: {other}" if other else ""))
    for i in survived:
        print(f"  survived {i:3d}: {MUTANTS[i - 1][0]}: {MUTANTS[i - 1][3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
