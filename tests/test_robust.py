"""Nothing lost, nothing silent (issue 15): runs are never overwritten by accident, SIGTERM
stops like Ctrl-C and says how to resume, checkpoints keep the user's umask, garbage (NaN
weights, non-finite samples, raw pixels, in-place changes under autograd) is refused."""
import os
import signal
import stat

import numpy as np
import pytest

import minidiff as md
from minidiff import backend
from minidiff.diffusion import NoiseSchedule, ddim_sample, ddpm_sample, training_step
from minidiff.models.unet import UNet
from minidiff.commands import train as train_cli
from minidiff.checkpoint import CheckpointError, load_checkpoint
from minidiff.config.checks import ConfigError
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer
from minidiff.config.checks import check_config
from minidiff.errors import MinidiffInputError, check_output_path

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "T": 10, "batch_size": 4, "steps": 6, "warmup_steps": 1,
        "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "diag_every": 0,
        "sample_steps": 2}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28)).astype(np.uint8)


# ----------------------------------------------------------------------------- autograd

def test_in_place_change_of_a_saved_tensor_raises_at_backward():
    x = md.tensor(np.arange(4.0), requires_grad=True)
    y = x * 2.0
    loss = (y * y).sum()              # mul saves y for its backward
    y[1] = 100.0                      # in place, after the graph used it
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()
    z = x * 2.0
    loss = (z * z).sum()
    z.data = z.data + 1.0             # assigning .data counts too (so does .data -= ...)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_unchanged_graph_and_changes_after_backward_are_fine():
    x = md.tensor(np.arange(4.0), requires_grad=True)
    y = x * 2.0
    (y * y).sum().backward()
    assert np.allclose(backend.to_host(x.grad), 8.0 * np.arange(4.0))   # d/dx (2x)^2 = 8x
    y[0] = 5.0                                         # the graph is gone: nothing to protect
    x.data -= 1.0                                      # the optimizer's update
    assert x._version == 1


# ----------------------------------------------------------------------------- model inputs

@pytest.fixture(scope="module")
def _unet():
    return UNet(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=())


@pytest.fixture
def unet(_unet):
    """Built once, before the per-test fixture sets the suite's backend: moved there here."""
    return _unet.to(backend.get_backend())


@pytest.mark.parametrize("x, t, words", [
    ([[0.0]], np.zeros(1, np.int64), "Tensor or an array"),
    (np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, np.int64), "uint8"),
    (np.zeros((2, 1, 30, 30), np.float32), np.zeros(2, np.int64), "cannot be halved"),
    (np.zeros((2, 1, 28, 28), np.float32), np.zeros(3, np.int64), "one step per image"),
    (np.zeros((2, 1, 28, 28), np.float32), np.array([0, -1]), ">= 0"),
    (np.zeros((2, 1, 28, 28), np.float32), np.array([0.5, 1.0]), "integer steps"),
    (np.zeros((2, 1, 28, 28), np.float32), [1, 2], "array of N = 2"),
])
def test_unet_checks_its_inputs_in_its_own_words(unet, x, t, words):
    with pytest.raises((TypeError, ValueError), match="UNet") as info:
        unet(md.Tensor(x) if isinstance(x, np.ndarray) else x, t)
    assert words in str(info.value)


def test_training_step_refuses_raw_pixels_and_steps_outside_t(unet):
    schedule = NoiseSchedule.linear(10)
    pixels = backend.to_device(np.full((2, 1, 28, 28), 200, np.uint8))
    with pytest.raises(ValueError, match="to_unit_range"):
        training_step(unet, schedule, pixels)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        training_step(unet, schedule, pixels.astype(np.float32))
    x0 = backend.to_device(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"\[0, T\)"):
        training_step(unet, schedule, x0, t=backend.to_device(np.array([0, 10])))
    t = backend.to_device(np.array([0, 9]))
    assert np.isfinite(training_step(unet, schedule, x0, t=t).item())


def test_trainer_refuses_float_images(tmp_path):
    config = resolve("quick", overrides=TINY)
    with pytest.raises(ConfigError, match="uint8"):
        Trainer(config, str(tmp_path), images=np.zeros((8, 1, 28, 28), np.float32))


@pytest.mark.parametrize("steps", [0, -1, 11, 2.5])
def test_both_samplers_refuse_the_same_step_counts(steps):
    schedule = NoiseSchedule.linear(10)

    def zero(x, t):
        return np.zeros(x.shape, np.float32)
    messages = []
    for run in (ddim_sample, ddpm_sample):
        with pytest.raises(ValueError, match=r"steps: expected None \(all T\)") as info:
            run(zero, schedule, (1, 1, 4, 4), steps=steps)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_non_finite_samples_name_the_cause():
    from minidiff.data.spaces import PixelSpace
    from minidiff.pipelines.sample import sample_images
    schedule = NoiseSchedule.linear(10)

    def overflowing(x, t):
        return backend.xp().full(x.shape, np.nan, np.float32)
    with pytest.raises(MinidiffInputError, match="NaN or Inf.*overflowed"):
        sample_images(overflowing, schedule, PixelSpace(4), 2, "ddim", steps=2)


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("change, key", [
    ({"groups": 3}, "groups"), ({"num_heads": 3}, "num_heads"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"lr": -1e-3}, "lr"), ({"dropout": 1.0}, "dropout"), ({"seed": -1}, "seed"),
    ({"log_every": -1}, "log_every"), ({"sample_steps": 11}, "sample_steps"),
    ({"image_size": 30, "channel_mults": [1, 2, 2]}, "image_size"),
    ({"patch_size": 3}, "patch_size"), ({"patch_size": 0}, "patch_size"),
    ({"patch_size": 2, "image_size": 28, "channel_mults": [1, 2, 4]}, "image_size"),
    ({"attention_resolutions": [5]}, "attention_resolutions"),
])
def test_config_check_names_the_key(change, key):
    config = resolve("quick", overrides=TINY)
    with pytest.raises(ConfigError, match=key):
        check_config({**config, **change})


def test_the_presets_pass_the_check():
    for name in ("quick", "mnist"):
        assert check_config(resolve(name))


# ----------------------------------------------------------------------------- files

def test_output_path_is_checked_before_work(tmp_path):
    assert check_output_path("--out", tmp_path / "new" / "g.png", (".png",))
    for bad in (tmp_path / "g", tmp_path / "g.txt", tmp_path):
        with pytest.raises(MinidiffInputError, match="--out"):
            check_output_path("--out", bad, (".png",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MinidiffInputError, match="is a file"):
        check_output_path("--out", tmp_path / "file" / "g.png", (".png",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(MinidiffInputError, match="not writable"):
            check_output_path("--out", folder / "g.png", (".png",))
    finally:
        folder.chmod(0o700)


def test_checkpoints_get_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        backend.save_npz(tmp_path / "a.npz", {"w": np.zeros(3)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o640


def test_nan_weights_are_refused_at_load_naming_the_key(tmp_path, images):
    trainer = Trainer(resolve("quick", overrides={**TINY, "steps": 1}), str(tmp_path / "run"),
                      images=images, log=lambda _: None)
    trainer.run()
    arrays = backend.load_npz(trainer.checkpoint_path)
    arrays["ema.unet.conv_in.weight"] = arrays["ema.unet.conv_in.weight"].copy()
    arrays["ema.unet.conv_in.weight"][0, 0, 0, 0] = np.nan
    backend.save_npz(tmp_path / "nan.npz", arrays)
    with pytest.raises(CheckpointError, match="has NaN in ema.unet.conv_in.weight"):
        load_checkpoint(tmp_path / "nan.npz")


# ----------------------------------------------------------------------------- never lose a run

def _command(out, *extra):
    sets = [f"{k}={v}".replace(" ", "") for k, v in TINY.items() if k not in ("steps",
                                                                              "batch_size")]
    argv = ["--out", str(out), "--steps", "3", "--batch-size", "4", "--train-images", "16"]
    for item in sets:
        argv += ["--set", item]
    return argv + list(extra)


def test_a_run_folder_is_never_replaced_silently(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(_command(out)) == 0
    before = (out / "checkpoint.npz").read_bytes()
    assert train_cli.main(_command(out)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    (out / "samples_000999.png").write_bytes(b"old grid")
    (out / "my_notes.txt").write_text("mine")
    assert train_cli.main(_command(out, "--overwrite", "--set", "seed=1")) == 0
    assert not (out / "samples_000999.png").exists() and (out / "my_notes.txt").exists()
    assert (out / "checkpoint.npz").read_bytes() != before


def test_sigterm_stops_like_ctrl_c_and_prints_the_resume_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original = Trainer.train_step

    def step_then_term(self):
        value = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return value
    monkeypatch.setattr(Trainer, "train_step", step_then_term)
    assert train_cli.main(_command(out, "--steps", "6")) == 130
    printed = capsys.readouterr().out
    assert "SIGTERM: stopping after this step" in printed
    assert load_checkpoint(out / "checkpoint.npz")["step"] in (2, 3)
    resume = printed.strip().splitlines()[-1]
    on = [] if md.get_backend() == "numpy" else ["--backend", md.get_backend()]
    prefix = " ".join(["to continue: minidiff", *on, "train --out "])
    assert resume.startswith(prefix), resume      # the backend it ran on, named unless default
    monkeypatch.setattr(Trainer, "train_step", original)
    argv = resume.split(" train ", 1)[1].split()
    assert train_cli.main(argv) == 0
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 6
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ----------------------------------------------------------------------------- figures

def test_x0_panel_has_one_label_per_row_naming_t(tmp_path):
    from PIL import Image
    from minidiff.data.images import save_grid
    from minidiff.train import diagnostics
    schedule = NoiseSchedule.linear(50)
    x0 = md.tensor(np.zeros((4, 1, 8, 8))).data

    def zero(x, t):
        return md.Tensor(backend.xp().zeros(x.shape, np.float32))
    _, panel = diagnostics.timestep_report(zero, schedule, x0)
    labels = diagnostics.panel_labels(50)
    assert len(panel) == 4 * len(labels) and labels[-1] == "x0^  t=50"
    save_grid(panel, tmp_path / "p.png", nrow=4, labels=labels)
    save_grid(panel, tmp_path / "q.png", nrow=4)
    assert Image.open(tmp_path / "p.png").width > Image.open(tmp_path / "q.png").width
    assert diagnostics.LOSS_OF_PREDICTION["v"] == "||v - v_theta||^2"
