"""Figures that tell *why* samples stay noise when the loss goes down (lesson 07).

* ``plot_loss_curve``: the training loss per step and its running mean (log scale).
* ``timestep_report``: on a fixed batch, the loss at several timesteps t and the model's
  predicted x_0 = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (2.5) at each.  A model
  that only learned the easy, very noisy t has a low average loss but a high loss at small t,
  and its x_0 panel shows blobs where digits should be.
* ``plot_timestep_loss``: that loss against t.

All of it runs under ``no_grad`` with the generator's state saved and restored, so a
diagnostic never changes the training run (resuming stays exact).
"""
from __future__ import annotations

from minidiff import backend
from minidiff.data.mnist import from_unit_range
from minidiff.diffusion import predict_x0_from_eps, q_sample, training_step
from minidiff.optim import AdamW
from minidiff.tensor import Tensor, no_grad

__all__ = ["plot_loss_curve", "timestep_report", "plot_timestep_loss", "overfit_one_batch",
           "DIAG_FRACTIONS"]

#: where t is examined, as fractions of T-1 (with T = 1000: t = 0, 25, 50, 100, ..., 999;
#: 0-based, index t is the paper's step t + 1); the x0 panel uses a few of them
DIAG_FRACTIONS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_PANEL_FRACTIONS = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)


def _steps(fractions, T: int) -> list:
    return sorted({round(f * (T - 1)) for f in fractions})


def panel_labels(T: int) -> list:
    """The row labels of ``timestep_report``'s panel: x_0, then x_t and x0_hat for each t
    (the paper's step, 1..T)."""
    labels = ["x_0"]
    for t in _steps(_PANEL_FRACTIONS, T):
        labels += [f"x_t  t={t + 1}", f"x0^  t={t + 1}"]
    return labels


#: what the network is trained to predict -> the loss it minimises, for plot labels
LOSS_OF_PREDICTION = {"eps": "||eps - eps_theta||^2 (L_simple)", "x0": "||x_0 - x0_theta||^2",
              "v": "||v - v_theta||^2"}


def _pyplot():
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def plot_loss_curve(losses, path, window: int = 50, prediction: str = "eps") -> None:
    """Per-step loss (light) and its running mean over ``window`` steps (dark), log y; the
    axis names the objective trained (``prediction``: eps, x0 or v)."""
    if not losses:
        return
    plt = _pyplot()
    host = backend.host
    values = host.asarray(losses, dtype=host.float64)
    kernel = min(window, len(values))
    smooth = host.convolve(values, host.ones(kernel) / kernel, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(host.arange(1, len(values) + 1), values, alpha=0.3, lw=0.8, label="loss")
    ax.plot(host.arange(kernel, len(values) + 1), smooth, lw=1.5,
            label=f"mean of {kernel}")
    objective = LOSS_OF_PREDICTION.get(prediction, prediction)
    ax.set(xlabel="step", ylabel=f"{prediction} loss", yscale="log",
           title=f"training loss: {objective}")
    ax.legend()
    fig.tight_layout()
    with backend.atomic_file(path) as temporary:     # whole or not at all
        fig.savefig(temporary, dpi=100)
    plt.close(fig)


def timestep_report(model, schedule, x0, timesteps=None, seed: int = 1234, decode=None):
    """``(losses, panel)``: the mean squared error of eps on the batch ``x0`` (same noise for
    every t) at each t in ``timesteps`` (default: spread over [0, T) by ``DIAG_FRACTIONS``),
    and a uint8 panel of rows x_0 | x_t | x0_hat for a few t (first 4 images each), ready
    for ``images.save_grid``; ``decode`` maps x_0 to images first (a latent space's)."""
    def image(x):
        return from_unit_range(x if decode is None else decode(x))

    xp = backend.xp()
    saved = backend.get_rng_state()
    backend.manual_seed(seed)
    try:
        T = schedule.num_timesteps
        timesteps = _steps(DIAG_FRACTIONS, T) if timesteps is None else list(timesteps)
        noise = backend.randn(*x0.shape, dtype=x0.dtype)
        losses, rows = {}, [image(x0[:4])]
        panel_t = _steps(_PANEL_FRACTIONS, T)
        with no_grad():
            for t in sorted(set(timesteps) | set(panel_t)):
                tt = xp.full((x0.shape[0],), t, dtype=xp.int64)
                x_t = q_sample(schedule, x0, tt, noise)
                eps = model(Tensor(x_t), tt).data[:, :x_t.shape[1]]   # not a learned v
                if t in timesteps:
                    losses[t] = float(((eps - noise) ** 2).mean())
                if t in panel_t:
                    x0_hat = predict_x0_from_eps(schedule, x_t, tt, eps)
                    rows += [image(x_t[:4]), image(x0_hat[:4])]
    finally:
        backend.set_rng_state(saved)
    return losses, backend.host.concatenate(rows)


def plot_timestep_loss(history, path) -> None:
    """``history``: list of (step, {t: loss}); one line per report, latest darkest."""
    if not history:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (step, losses) in enumerate(history):
        ts = sorted(losses)
        shade = 0.25 + 0.75 * (i + 1) / len(history)
        ax.plot([t + 1 for t in ts], [losses[t] for t in ts], marker="o", ms=3,
                color=(0.1, 0.2, 0.6, shade), label=f"step {step}")
    ax.set(xlabel="timestep t (paper's 1..T)", ylabel="eps MSE", yscale="log",
           title="loss by timestep (fixed batch)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with backend.atomic_file(path) as temporary:     # whole or not at all
        fig.savefig(temporary, dpi=100)
    plt.close(fig)


def overfit_one_batch(model, schedule, x0, steps: int = 30, lr: float = 3e-3, seed: int = 0):
    """Losses of ``steps`` AdamW steps on one fixed (x0, t, eps): the first sanity check.

    With the data, the timesteps and the noise all fixed, a working model and backward pass
    drive the loss towards zero within a few dozen steps.  If it does not, the bug is in the
    model or the gradients, not in the amount of training."""
    backend.manual_seed(seed)
    t = backend.randint(0, schedule.num_timesteps, (x0.shape[0],))
    noise = backend.randn(*x0.shape, dtype=x0.dtype)
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = training_step(model, schedule, x0, t=t, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
