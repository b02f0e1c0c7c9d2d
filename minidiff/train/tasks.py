"""What the one training loop (``trainer.py``) trains: a *task* per config ``model``.

A task owns the network and knows four things the loop does not:

    batch(index) -> x       the training examples of one step (host indices -> device array)
    loss(index, part) -> (loss, terms)   the objective of one step (of its ``part``, a slice,
                            on one of several data-parallel ranks), and its named parts
    grid(trainer, path)     the picture saved every ``sample_every`` steps (EMA weights)
    finish(trainer) -> {}   named arrays measured at the end, stored in both checkpoint files

* ``DiffusionTask`` (``model: unet``): Algorithm 1 (lesson 07), sample grids (drawn with the
  config's sampler), the loss-by-timestep and predicted-x0 diagnostics, in the space its
  config names: pixels, or the latents of an autoencoder (``minidiff.data.spaces``, lesson
  10), which then encodes the training images once, here.  A conditioned config (lesson 11,
  ``minidiff.models.conditioned``) gets its network from ``build_model`` and each batch's
  ``cond`` from a ``Conditioner``; a text model's grid shows one row per digit prompt, at
  the config's guidance.
* ``AutoencoderTask`` (``model: autoencoder``, lesson 09): reconstruction + kl_weight * KL
  (9.5), a grid of originals above their reconstructions, curves of each loss term, and at
  the end the latent scale factor (9.6), measured on the EMA weights.
"""
from __future__ import annotations

import os

from minidiff import backend
from minidiff.config.build import autoencoder_config, build_model, schedule_from_config
from minidiff.config.checks import ConfigError
from minidiff.config.vocabulary import uses_text
from minidiff.data.captions import DIGIT_WORDS
from minidiff.data.images import save_grid
from minidiff.data.mnist import from_unit_range, to_unit_range
from minidiff.diffusion import training_step
from minidiff.diffusion.resample import LossSecondMomentSampler
from minidiff.models.autoencoder import AutoencoderKL, autoencoder_loss, scale_by_std
from minidiff.pipelines.load import Pipeline, space_from_config
from minidiff.pipelines.sample import sample_images
from minidiff.tensor import no_grad
from minidiff.train import diagnostics
from minidiff.train.conditioner import Conditioner

__all__ = ["make_task", "DiffusionTask", "AutoencoderTask"]


class _EvalWithEma:
    """``with _EvalWithEma(trainer):`` EMA weights, eval mode, the generator untouched."""

    def __init__(self, trainer, seed: int = 0):
        self.trainer, self.seed = trainer, seed

    def __enter__(self):
        self.saved = backend.get_rng_state()
        backend.manual_seed(self.seed)
        self.swap = self.trainer.ema.swapped()
        self.swap.__enter__()
        self.trainer.model.eval()

    def __exit__(self, *exc):
        self.trainer.model.train()
        self.swap.__exit__(*exc)
        backend.set_rng_state(self.saved)


class DiffusionTask:
    """A U-Net trained by Algorithm 1 on images, or on their latents."""

    grid_name = "samples"

    def __init__(self, config: dict, images, space=None, log=print, labels=None):
        self.config, self.images = config, images
        self.space = (space if space is not None else space_from_config(config)).use(images,
                                                                                     log=log)
        self.model = build_model(config).train()
        self.schedule = schedule_from_config(config)
        self.conditioner = Conditioner(config, images, labels, self.space)
        # the network being trained seen as a loaded one: the grids and the diagnostics
        # build their conditions and guided eps_theta as sample and eval do
        self.pipeline = Pipeline(self.model, self.schedule, config, self.space,
                                 self.conditioner.tokenizer, self.conditioner.stats)
        # what the diagnostics call: eps_theta, whatever the network predicts, at the null
        # condition (nothing, the empty caption, everything to fill)
        eps = self.pipeline.eps_model
        self.eps_model = lambda x_t, t: eps(x_t, t, self.pipeline.cond(x_t.shape[0])[0])
        self.t_history = []
        self.t_sampler = (LossSecondMomentSampler(self.schedule.num_timesteps)
                          if config["t_sampler"] == "loss-second-moment" else None)

    def record(self) -> dict:
        """Named arrays every checkpoint keeps: a text model's caption statistics."""
        return self.conditioner.record()

    def batch(self, index):
        """x_0 of one step: images scaled to [-1, 1], or s z drawn from their posteriors."""
        return self.space.batch(index)

    def loss(self, index, part=None):
        """Algorithm 1 with the config's ``objective`` and ``variance`` (lesson 13), t drawn
        uniformly or by ``t_sampler``; the terms (L_simple, L_vlb in bits/dim) are logged
        for vlb and hybrid."""
        c = self.config
        t = weights = None
        if self.t_sampler is not None:
            t, weights = self.t_sampler.draw(len(index))
        x0 = self.batch(index)
        cond = self.conditioner.batch(index)
        loss, info = training_step(self.model, self.schedule, x0,
                                   target_type=c["prediction"], t=t, part=part,
                                   min_snr_gamma=c["min_snr_gamma"] or None,
                                   x0_range=self.space.data_range,
                                   objective=c["objective"],
                                   variance=c["variance"],
                                   vlb_weight=c["vlb_weight"],
                                   weights=weights, details=True, cond=cond)
        if self.t_sampler is not None:
            self.t_sampler.update(t if part is None else t[part], info["per_item"])
        if c["objective"] == "simple":
            return loss, {}
        return loss, {name: info[name] for name in ("simple", "vlb") if name in info}

    def state_dict(self) -> dict:
        """What a resumed run needs beyond the weights: the t sampler's loss history."""
        if self.t_sampler is None:
            return {}
        return {f"t_sampler.{k}": v for k, v in self.t_sampler.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        if self.t_sampler is not None and state:
            self.t_sampler.load_state_dict(state)

    def grid(self, trainer, path):
        """``sample_count`` digits from the EMA weights, drawn as the config says (its
        ``sampler`` in ``sample_steps`` steps; DDIM with eta 0, DDPM with its ``variance``);
        a text model: one row per digit word ("zero" ... "nine"), sample_count // 10 in each."""
        c = self.config
        eps_model, n, nrow, labels = self.eps_model, c["sample_count"], None, None
        with _EvalWithEma(trainer, seed=trainer.grid_seed):
            if uses_text(c):
                nrow = max(1, n // len(DIGIT_WORDS))
                prompts = [word for word in DIGIT_WORDS for _ in range(nrow)]
                labels = list(DIGIT_WORDS)
                n = len(prompts)
                cond, uncond = self.pipeline.cond(n, prompts=prompts)
                eps_model = self.pipeline.eps(cond, uncond)      # at the config's guidance
            images, _ = sample_images(eps_model, self.schedule, self.space, n, c["sampler"],
                                      c["sample_steps"], seed=None, variance=c["variance"])
        save_grid(from_unit_range(images), path, nrow=nrow, labels=labels)

    def diagnose(self, trainer) -> None:
        """Loss-by-timestep plot and predicted-x0 panel on a fixed batch of 32 images."""
        x0 = self.space.batch(backend.host.arange(min(32, len(self.images))), draw=False)
        self.model.eval()
        try:
            losses, panel = diagnostics.timestep_report(self.eps_model, self.schedule, x0,
                                                        decode=self.space.decode)
        finally:
            self.model.train()
        self.t_history = [h for h in self.t_history if h[0] != trainer.step][-5:]
        self.t_history.append((trainer.step, losses))
        diagnostics.plot_timestep_loss(self.t_history, os.path.join(trainer.out, "loss_by_t.png"))
        save_grid(panel, os.path.join(trainer.out, f"x0_pred_{trainer.step:06d}.png"), nrow=4,
                  labels=diagnostics.panel_labels(self.schedule.num_timesteps))

    def plot(self, trainer) -> None:
        diagnostics.plot_loss_curve(trainer.losses, os.path.join(trainer.out, "loss.png"),
                                    prediction=self.config["prediction"])
        for name, values in trainer.terms.items():     # L_simple, L_vlb of vlb / hybrid
            diagnostics.plot_loss_curve(values, os.path.join(trainer.out, f"loss_{name}.png"),
                                        prediction=name)

    def finish(self, trainer) -> dict:
        return {}


class AutoencoderTask:
    """The KL autoencoder of lesson 09."""

    grid_name = "reconstructions"

    def __init__(self, config: dict, images):
        self.config, self.images = config, images
        self.model = AutoencoderKL(autoencoder_config(config)).train()

    def batch(self, index):
        return to_unit_range(self.images[index])

    def loss(self, index, part=None):
        """(9.5): reconstruction of x from a reparameterized z ~ q(z|x), plus the weighted KL."""
        if part is not None:
            raise ConfigError("--distributed trains diffusion models only; train the "
                              "autoencoder in one process")
        x = self.batch(index)
        reconstruction, posterior = self.model(x)
        return autoencoder_loss(x, reconstruction, posterior, self.config["kl_weight"],
                                self.config["recon_loss"])

    def grid(self, trainer, path):
        """The first ``sample_count`` training images (rows of 8) above D(mean of q(z|x))."""
        x = to_unit_range(self.images[:self.config["sample_count"]])
        with _EvalWithEma(trainer), no_grad():
            reconstruction = self.model.decode(self.model.encode(x).mode()).data
        xp = backend.xp()
        both = xp.concatenate([x, xp.clip(reconstruction, -1.0, 1.0)])
        save_grid(from_unit_range(both), path, nrow=8)

    def diagnose(self, trainer) -> None:
        """Nothing beyond the grid and the curves."""

    def plot(self, trainer) -> None:
        """Total loss, then each term (reconstruction per pixel, KL per latent dimension)."""
        diagnostics.plot_loss_curve(trainer.losses, os.path.join(trainer.out, "loss.png"),
                                    prediction="autoencoder")
        for name, values in trainer.terms.items():
            diagnostics.plot_loss_curve(values, os.path.join(trainer.out, f"loss_{name}.png"),
                                        prediction=name)

    def finish(self, trainer) -> dict:
        """The latent scale factor (9.6) of the EMA weights, on ``scale_images`` images."""
        x = to_unit_range(self.images[:self.config["scale_images"] or None])
        with _EvalWithEma(trainer):
            scale = scale_by_std(self.model, x)
        trainer.log(f"latent scale factor (1 / std of z over {len(x)} training images): "
                    f"{scale:.5f}")
        return {"scale_factor": backend.host.asarray(scale, dtype=backend.host.float64)}


TASKS = {"unet": DiffusionTask, "autoencoder": AutoencoderTask}


def make_task(config: dict, images, space=None, log=print, labels=None):
    """The task the config's ``model`` names (configs without the key train a U-Net);
    ``space``: where a U-Net's x_0 lives (default: the one its config names); ``labels``:
    the images' digits (a text-conditioned model captions them)."""
    kind = config["model"]
    if kind == "unet":
        return DiffusionTask(config, images, space=space, log=log, labels=labels)
    return TASKS[kind](config, images)
