"""The training loop of Algorithm 1, with what a real run needs around it.

Each step: take the next batch, draw t and eps, ``loss = training_step(...)``, backward,
clip the global gradient norm, set the warm-up/cosine learning rate, AdamW step, EMA update.

**One loop, several models.**  What is trained comes from the config's ``model``
(``tasks.py``): a diffusion U-Net (the step above) or the autoencoder of lesson 09 (its
loss is reconstruction + kl_weight * KL).  The task supplies the network, the loss of a
batch, the picture saved every ``sample_every`` steps and what is measured at the end; the
loop below (progress, checkpoints, resumption, Ctrl-C, NaN stop, EMA) is the same for all.

**Exact resumption.**  Everything random comes from minidiff's one generator, whose state is
saved in every checkpoint, except the order of the data: batch ``step`` is a slice of the
permutation of epoch ``step // batches_per_epoch``, drawn from a generator seeded with
(seed, epoch).  So the order depends only on the step number, and N steps straight give the
same weights as N/2 steps, a checkpoint, and N/2 more.  Diagnostics and sample grids save
and restore the generator's state, so they do not perturb the run either.

**Failure handling.**  Ctrl-C (SIGINT), or SIGTERM from a job scheduler or ``timeout``, only
sets a flag, so the step in flight finishes; the loop then saves a checkpoint and returns (a
second signal interrupts at once); a NaN or Inf loss stops
the run with ``TrainingDiverged`` naming the step and the last good checkpoint.

**Data parallel** (``distributed``, see ``minidiff.train.distributed``).  Each rank computes its
slice of every batch; between backward and clipping the gradients, the loss and the stop flag
are averaged over the ranks, so all keep the same weights and stop after the same step.  Rank 0
alone writes checkpoints, pictures and the log.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

from minidiff import backend
from minidiff.checkpoint import CheckpointError, group, load_checkpoint, save_checkpoint
from minidiff.config.checks import ConfigError, check_config, check_data
from minidiff.data.mnist import load_mnist
from minidiff.data.spaces import SpaceError
from minidiff.optim import AdamW, EMA, WarmupCosine, clip_grad_norm
from minidiff.progress import clock
from minidiff.train.distributed import digest as distributed_digest
from minidiff.train.tasks import make_task

__all__ = ["Trainer", "TrainingDiverged", "batch_indices", "RESUMABLE", "resume_changes",
           "check_resumable"]

#: what a resumed run may change: how long it runs and its bookkeeping, none of which changes
#: what a training step computes.  Any other key of the configuration makes it another run.
RESUMABLE = ("steps", "log_every", "sample_every", "checkpoint_every", "diag_every",
             "sampler", "sample_steps", "sample_count")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


def batch_indices(seed: int, step: int, batch_size: int, n: int):
    """Host indices of batch ``step`` (0-based): a function of (seed, step) only."""
    per_epoch = max(1, n // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = backend.host.random.default_rng([int(seed), epoch]).permutation(n)
    return order[position * batch_size:(position + 1) * batch_size]


def check_resumable(arrays: dict, path) -> None:
    """Refuse (``CheckpointError``) a checkpoint that cannot be continued: an EMA-only export."""
    if not group(arrays, "model"):
        raise CheckpointError(
            f"{path} is an EMA-only export (the averaged weights and config, for sampling), "
            "not a training checkpoint: it has no raw weights or optimizer state to "
            "continue from", f"resume from the run's checkpoint.npz, or sample from this "
            f"file with: minidiff sample --checkpoint {path}")


def resume_changes(saved: dict, asked: dict, path, step: int) -> list:
    """What a resumed run changes, as notes ``["steps 2000 -> 4000"]``: only ``RESUMABLE``
    keys may differ between the checkpoint's config ``saved`` and the one asked for; any
    other difference is a ``ConfigError`` naming every such key with both values (a run
    resumed with another learning rate or batch size is not the run it says it is), and so
    is a ``steps`` below the checkpoint's ``step``."""
    differ = sorted(key for key in set(saved) | set(asked) if saved.get(key) != asked.get(key))
    refused = [key for key in differ if key not in RESUMABLE]
    if refused:
        changes = ", ".join(f"{key} {json.dumps(saved.get(key))} -> {json.dumps(asked.get(key))}"
                            for key in refused)
        raise ConfigError(f"--resume: {path} was trained with another configuration ("
                          f"{changes})", "resume without changing them (a run resumed with "
                          "other values is not the same run), or start a new run in "
                          "another --out")
    if asked["steps"] < step:
        raise ConfigError(f"--steps: {path} is already at step {step}; expected at least "
                          f"{step}, got {asked['steps']}")
    return [f"{key} {json.dumps(saved.get(key))} -> {json.dumps(asked.get(key))}"
            for key in differ]


class Trainer:
    """Owns the model, optimizer, EMA and data of one run, writing into folder ``out``.

    A diffusion model's x_0 lives in the space its config names (pixels, or an autoencoder's
    latents: ``minidiff.data.spaces``) unless ``space`` is given."""

    def __init__(self, config: dict, out: str, images=None, log=print, space=None,
                 distributed=None, labels=None):
        self.config, self.out, self.log = dict(config), out, log
        self.distributed, self.is_main = distributed, distributed is None or distributed.is_main
        if not self.is_main:
            self.log = lambda line: None
        c = check_config(self.config)
        if distributed is not None and c["t_sampler"] != "uniform":
            raise ConfigError(f"t_sampler={c['t_sampler']} keeps one loss history per process; "
                              "use t_sampler=uniform with --distributed")
        backend.manual_seed(c["seed"])
        if images is None:
            images, labels = load_mnist("train")
        check_data(c, images)
        if c["train_images"]:
            images = images[:c["train_images"]]
            labels = None if labels is None else labels[:c["train_images"]]
        self.images = images                      # host uint8 (N, 1, 28, 28)
        # the network, its loss and its pictures: a U-Net or an autoencoder (tasks.py);
        # labels: the digits, which a text-conditioned model's captions name
        self.task = make_task(c, images, space=space, log=log, labels=labels)
        self.model = self.task.model
        self.schedule = getattr(self.task, "schedule", None)      # diffusion only
        self.eps_model = getattr(self.task, "eps_model", None)
        self.optimizer = AdamW(self.model.parameters(), lr=c["lr"],
                               weight_decay=c["weight_decay"])
        self.scheduler = WarmupCosine(self.optimizer, c["steps"], c["warmup_steps"],
                                      c["min_lr"])
        self.ema = EMA(self.model, decay=c["ema_decay"])
        self.step, self.losses, self.terms = 0, [], {}
        self.stop_requested = self.stop_agreed = False
        self.extra = {}                           # what the task measured at the end
        self.grid_seed = 0
        self.last_checkpoint = None
        self.checkpoint_path = os.path.join(out, "checkpoint.npz")

    # ------------------------------------------------------------------ checkpoints
    def _terms_record(self) -> dict:
        host = backend.host
        return {f"history.{k}": host.asarray(v, dtype=host.float64)
                for k, v in self.terms.items()}

    def save(self, path=None) -> str:
        path = path or self.checkpoint_path
        if self.is_main:
            save_checkpoint(path, model=self.model, ema=self.ema, config=self.config,
                            step=self.step, optimizer=self.optimizer,
                            scheduler=self.scheduler, history=self.losses,
                            extra={**self._terms_record(), **self.extra,
                                   **self._space_record(), **self._task_state()})
        self.last_checkpoint = path
        return path

    def resume(self, path, arrays: dict | None = None) -> None:
        """Restore weights, EMA, optimizer, schedule, generator, step and history from
        ``path`` (``arrays``: its ``load_checkpoint`` dict, if already read; a
        ``StateDictError`` if the architecture differs)."""
        arrays = load_checkpoint(path) if arrays is None else arrays
        check_resumable(arrays, path)
        kind, here = arrays["config"]["model"], self.config["model"]
        if kind != here:
            raise CheckpointError(f"{path}: holds a {kind!r} model, this run trains a "
                                  f"{here!r} model; resume it with its own preset")
        recorded = str(arrays.get("autoencoder.sha256", ""))
        if recorded != self._space_record().get("autoencoder.sha256", ""):
            space = getattr(self.task, "space", None)
            raise SpaceError(f"{path} was trained on the autoencoder with weights sha256 "
                             f"{recorded[:16] or '(none: pixels)'}..., this run uses "
                             f"{getattr(space, 'sha256', '(none: pixels)')[:16]}...")
        self.model.load_state_dict(group(arrays, "model"))
        shadow = group(arrays, "ema")
        names = list(self.model.state_dict())
        self.ema.load_state_dict({**{f"shadow.{i}": shadow[k] for i, k in enumerate(names)},
                                  **group(arrays, "ema_meta")})
        self.ema.decay = self.config["ema_decay"]
        if hasattr(self.task, "load_state_dict"):     # e.g. the t sampler's loss history
            self.task.load_state_dict(group(arrays, "t_sampler"))
        self.optimizer.load_state_dict(group(arrays, "optim"))
        self.scheduler.load_state_dict(group(arrays, "sched"))
        backend.set_rng_state(str(arrays["rng"]))
        self.step = arrays["step"]
        history = group(arrays, "history")
        self.losses = [float(v) for v in history.pop("loss")]
        self.terms = {k: [float(v) for v in values] for k, values in history.items()}
        self.last_checkpoint = path

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        c = self.config
        index = batch_indices(c["seed"], self.step, c["batch_size"], len(self.images))
        part = self.distributed.part(c["batch_size"]) if self.distributed else None
        loss, terms = self.task.loss(index, part=part)
        value = loss.item()
        self.optimizer.zero_grad()
        loss.backward()
        if self.distributed:   # mean gradient and loss over the ranks; agree on stopping
            value, self.stop_agreed = self.distributed.average(
                self.model.parameters(), value, self.stop_requested)
        if not math.isfinite(value):
            where = self.last_checkpoint or "none saved yet"
            raise TrainingDiverged(f"loss is {value} at step {self.step + 1}; "
                                   f"last good checkpoint: {where}")
        if c["grad_clip"]:
            norm = clip_grad_norm(self.model.parameters(), c["grad_clip"])
            if not math.isfinite(norm):   # refuse the update, keep the weights finite
                raise TrainingDiverged(f"gradient norm is {norm} at step {self.step + 1}; "
                                       f"last good checkpoint: "
                                       f"{self.last_checkpoint or 'none saved yet'}")
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        self.step += 1
        self.losses.append(value)
        for name, term in terms.items():
            self.terms.setdefault(name, []).append(term)
        return value

    # ------------------------------------------------------------------ outputs
    def sample_grid(self, path=None, seed: int = 0):
        """The task's picture from the EMA weights, fixed seed (grids at different steps are
        comparable): samples of a diffusion model (drawn with its config's sampler),
        reconstructions of an autoencoder."""
        self.grid_seed = seed
        path = path or os.path.join(self.out, f"{self.task.grid_name}_{self.step:06d}.png")
        self.task.grid(self, path)
        return path

    def diagnose(self) -> None:
        """The task's diagnostics (diffusion: loss by timestep, predicted-x0 panel)."""
        self.task.diagnose(self)

    def _due(self, key: str) -> bool:
        every = self.config[key]
        return bool(every) and (self.step % every == 0 or self.step == self.config["steps"])

    # ------------------------------------------------------------------ the loop
    def run(self, stop_at: int | None = None) -> str:
        """Train until ``steps`` (or ``stop_at``).  Returns "done" or "interrupted".

        Writes ``checkpoint.npz`` (everything, for ``--resume``) and, at the end, ``ema.npz``
        (EMA weights and config only, for ``minidiff sample``)."""
        c = self.config
        end = min(c["steps"], stop_at or c["steps"])
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
        start_step, busy = self.step, 0.0
        self.stop_requested = self.stop_agreed = False
        self._check_ranks_agree()
        previous = self._install_sigint()
        try:
            while self.step < end:
                # with ranks, only the flag they all learnt in the last Allreduce
                if self.stop_agreed if self.distributed else self.stop_requested:
                    raise KeyboardInterrupt
                tick = time.time()
                loss = self.train_step()
                busy += time.time() - tick
                if self._due("log_every"):
                    elapsed = busy  # time in training steps only, not in samples/figures
                    rate = (self.step - start_step) / max(elapsed, 1e-9)
                    left = (end - self.step) / max(rate, 1e-9)
                    parts = "".join(f"{k} {v[-1]:.4f}  " for k, v in self.terms.items())
                    self.log(f"step {self.step:6d}/{c['steps']}  loss {loss:.4f}  {parts}"
                             f"lr {self.optimizer.lr:.2e}  "
                             f"{rate * c['batch_size']:6.1f} images/s  "
                             f"{rate:.2f} steps/s  left {clock(left)}")
                if self._due("checkpoint_every"):
                    self._check_ranks_agree()
                    self.save()
                if self._due("sample_every") and self.is_main:
                    self.log(f"{self.task.grid_name}: {self.sample_grid()}")
                    self.task.plot(self)
                if self._due("diag_every") and self.is_main:
                    self.diagnose()
        except KeyboardInterrupt:
            self.log(f"interrupted at step {self.step}; checkpoint saved to {self.save()}")
            return "interrupted"
        finally:
            for signum, handler in (previous or {}).items():
                signal.signal(signum, handler)
        if self.step >= c["steps"]:
            self.extra = self.task.finish(self)   # e.g. the autoencoder's scale factor
        self.save()
        if self.is_main:
            # the small file to share or sample from: EMA weights and config only
            save_checkpoint(os.path.join(self.out, "ema.npz"), model=self.model, ema=self.ema,
                            config=self.config, step=self.step, ema_only=True,
                            extra={**self.extra, **self._space_record()})
            self.task.plot(self)
        return "done"

    def _task_state(self) -> dict:
        """What the task needs to resume exactly besides the weights (its t sampler)."""
        state = getattr(self.task, "state_dict", None)
        return state() if state is not None else {}

    def _space_record(self) -> dict:
        """What a latent model's checkpoints record: its autoencoder's weights hash; and what
        the task keeps (a text model's caption statistics, ``captions.*``)."""
        sha = getattr(getattr(self.task, "space", None), "sha256", None)
        record = getattr(self.task, "record", dict)()
        return {**record, **({"autoencoder.sha256": sha} if sha else {})}

    def _check_ranks_agree(self) -> None:
        """With ranks: stop all of them unless every one holds rank 0's weights, step and
        generator state (the same seed and config, or the same checkpoint)."""
        if self.distributed:
            self.distributed.check_same(
                step=str(self.step), rng=backend.get_rng_state(),
                weights=distributed_digest(p.data for p in self.model.parameters()))

    def _install_sigint(self):
        """First Ctrl-C or SIGTERM: finish the current step, then stop; returns the old
        handlers, {signal: handler}."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.log(f"{name}: stopping after this step (again to stop at once)")
        return {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
