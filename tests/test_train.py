"""``minidiff train``: presets and overrides, exact resumption, Ctrl-C, NaN detection, the
one-batch overfitting check, and one-line errors for bad input."""
import json
import os
import signal

import pytest

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.commands import train as cli
from minidiff.train.diagnostics import overfit_one_batch
from minidiff.checkpoint import load_checkpoint, save_checkpoint
from minidiff.config.checks import ConfigError
from minidiff.config.presets import parse_set, resolve
from minidiff.nn.module import StateDictError
from minidiff.train.trainer import Trainer, TrainingDiverged, batch_indices

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "T": 50, "batch_size": 4, "image_size": 16, "steps": 8,
        "warmup_steps": 2, "train_images": 200, "log_every": 0, "sample_every": 0,
        "checkpoint_every": 0, "diag_every": 0, "sample_count": 4, "sample_steps": 3,
        "ema_decay": 0.9, "lr": 1e-3}


@pytest.fixture(scope="module")
def images():
    """200 digits, centre-cropped to 16x16 so the tiny U-Net runs ~3x faster than at 28x28."""
    return load_mnist("train")[0][:200, :, 6:22, 6:22]


def tiny(**changes):
    return resolve("quick", overrides={**TINY, **changes})


def _weights(trainer):
    return {k: backend.to_host(v) for k, v in trainer.model.state_dict().items()}


def test_presets_and_overrides(tmp_path):
    assert resolve("mnist")["base_channels"] == 32
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.5, "steps": 7}))
    config = resolve("quick", str(path), ["lr=0.25", "schedule=cosine", "channel_mults=[1,2]"],
                     {"steps": 9, "batch_size": None})
    assert (config["lr"], config["steps"], config["schedule"]) == (0.25, 9, "cosine")
    assert config["channel_mults"] == [1, 2]
    assert parse_set("seed=3") == ("seed", 3)


@pytest.mark.parametrize("sets, words", [(["lr"], "key=value"), (["=3"], "key=value"),
                                          (["lr="], "key=value"), (["lrr=1"], "unknown"),
                                          (["lr=fast"], "number"),
                                          (["channel_mults=[1,2"], "list")])
def test_malformed_set(sets, words):
    with pytest.raises(ConfigError, match=words):
        resolve("quick", sets=sets)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minidiff: ") and "quick" in err and "mnist" in err
    assert err.count("\n") == 1
    assert cli.main(["--set", "lr"]) == 2
    assert "key=value" in capsys.readouterr().err
    missing = str(tmp_path / "missing.npz")
    assert cli.main(["--resume", missing]) == 2
    assert missing in capsys.readouterr().err


def test_batch_order_depends_on_seed_and_step_only():
    a = batch_indices(0, 30, 8, 100)
    assert (a == batch_indices(0, 30, 8, 100)).all() and len(a) == 8
    epoch = [i for s in range(12) for i in batch_indices(0, s, 8, 100)]
    assert sorted(epoch) == sorted(set(epoch))      # no repeats within an epoch


def test_resume_is_exact(tmp_path, images):
    straight = Trainer(tiny(), str(tmp_path / "a"), images=images, log=lambda _: None)
    assert straight.run() == "done"
    first = Trainer(tiny(), str(tmp_path / "b"), images=images, log=lambda _: None)
    first.run(stop_at=4)
    assert first.step == 4
    backend.manual_seed(999)                         # the checkpoint must restore the RNG
    second = Trainer(tiny(), str(tmp_path / "b"), images=images, log=lambda _: None)
    second.resume(first.last_checkpoint)
    second.run()
    assert second.step == 8 and second.losses == straight.losses
    for key, value in _weights(straight).items():
        assert (value == _weights(second)[key]).all(), key
    assert all((backend.to_host(a) == backend.to_host(b)).all()
               for a, b in zip(straight.ema.shadow, second.ema.shadow))


def test_checkpoint_contents_load_without_pickle(tmp_path, images):
    trainer = Trainer(tiny(steps=2), str(tmp_path), images=images, log=lambda _: None)
    trainer.run()
    arrays = load_checkpoint(trainer.last_checkpoint)   # load_npz uses allow_pickle=False
    assert arrays["step"] == 2 and arrays["config"]["base_channels"] == 8
    assert {"rng", "history.loss", "optim.step", "sched.last_step"} <= set(arrays)


def test_ctrl_c_saves_and_stops(tmp_path, images):
    def log(line):
        if line.startswith("step      3"):
            os.kill(os.getpid(), signal.SIGINT)
    trainer = Trainer(tiny(log_every=1), str(tmp_path), images=images, log=log)
    assert trainer.run() == "interrupted"
    assert trainer.step in (3, 4)
    assert load_checkpoint(trainer.checkpoint_path)["step"] == trainer.step


def test_nan_loss_names_step_and_checkpoint(tmp_path, images):
    trainer = Trainer(tiny(checkpoint_every=2), str(tmp_path), images=images,
                      log=lambda _: None)
    trainer.run(stop_at=2)
    trainer.model.unet.conv_in.weight.data[...] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 3.*checkpoint.npz"):
        trainer.run()


def test_wrong_architecture_resume_is_one_line(tmp_path, images, capsys):
    trainer = Trainer(tiny(steps=1), str(tmp_path), images=images, log=lambda _: None)
    trainer.run()
    # (image_size=28: the command trains on MNIST itself, not on the 16x16 crops)
    assert cli.main(["--resume", trainer.last_checkpoint, "--out", str(tmp_path),
                     "--base-channels", "16", "--set", "image_size=28"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minidiff: ") and err.count("\n") == 1
    # the command compares configurations before building anything (base_channels 8 -> 16);
    # a Trainer given the other architecture directly fails on the weights' shapes
    assert "base_channels 8 -> 16" in err and "image_size 16 -> 28" in err
    other = Trainer(tiny(base_channels=16), str(tmp_path), images=images, log=lambda _: None)
    with pytest.raises(StateDictError, match="wrong shapes"):
        other.resume(trainer.last_checkpoint)


def test_overfits_one_batch(images):
    """The first check when samples stay noise: can the model memorise one fixed batch?"""
    trainer = Trainer(tiny(), "unused", images=images, log=lambda _: None)
    x0 = to_unit_range(images[:4])
    losses = overfit_one_batch(trainer.model, trainer.schedule, x0, steps=30)
    assert sum(losses[-3:]) / 3 < 0.3 * sum(losses[:3]) / 3, losses


def test_figures_are_written(tmp_path, images):
    trainer = Trainer(tiny(steps=2, sample_every=2, diag_every=2), str(tmp_path),
                      images=images, log=lambda _: None)
    trainer.run()
    names = set(os.listdir(tmp_path))
    assert {"loss.png", "loss_by_t.png", "samples_000002.png", "x0_pred_000002.png",
            "ema.npz"} <= names


def test_export_is_ema_only(tmp_path, images):
    trainer = Trainer(tiny(steps=1), str(tmp_path), images=images, log=lambda _: None)
    trainer.run()
    save_checkpoint(tmp_path / "e.npz", model=trainer.model, ema=trainer.ema,
                    config=trainer.config, step=trainer.step, ema_only=True)
    arrays = load_checkpoint(tmp_path / "e.npz")
    assert not any(k.startswith(("model.", "optim.")) for k in arrays)


def test_train_then_sample_end_to_end(tmp_path, capsys):
    """``minidiff train`` with a JSON config, then ``minidiff sample`` on its ema.npz."""
    from minidiff.commands import sample
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "image_size": 28, "train_images": 16,
                                  "log_every": 1}))
    out = str(tmp_path / "run")
    assert cli.main(["--config", str(config), "--steps", "2", "--out", out]) == 0
    assert "images/s" in capsys.readouterr().out
    grid = str(tmp_path / "grid.png")
    assert sample.main(["--checkpoint", os.path.join(out, "ema.npz"), "--n", "2",
                        "--steps", "2", "--out", grid]) == 0
    assert os.path.exists(grid)


def test_timestep_report_covers_small_T(images):
    from minidiff.train.diagnostics import timestep_report
    trainer = Trainer(tiny(T=50), "unused", images=images, log=lambda _: None)
    losses, panel = timestep_report(trainer.model, trainer.schedule,
                                    to_unit_range(images[:4]))
    assert min(losses) == 0 and max(losses) == 49 and len(losses) >= 10
    assert panel.shape == (4 * (1 + 2 * 6), 1, 16, 16)     # x0, then (x_t, x0_hat) x 6


def test_v_prediction_run_samples_through_eps(tmp_path, images):
    """prediction=v: the trainer fits v, and the checkpoint comes back as an eps-network,
    eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (2.6), checked against the raw network."""
    import numpy as np
    from minidiff.tensor import Tensor, no_grad
    from minidiff.pipelines.load import load_pipeline
    trainer = Trainer(tiny(steps=2, prediction="v", sample_every=2), str(tmp_path),
                      images=images, log=lambda _: None)
    assert trainer.run() == "done"
    path = str(tmp_path / "ema.npz")
    pipeline = load_pipeline(path)
    eps_model, schedule, config = pipeline.eps(), pipeline.schedule, pipeline.config
    network = pipeline.model
    assert config["prediction"] == "v"
    x_t = backend.randn(2, 1, 16, 16)
    t = backend.to_device(np.array([3, 40]))
    abar = np.cumprod(1 - backend.to_host(schedule.betas))[[3, 40]].reshape(2, 1, 1, 1)
    with no_grad():
        v = backend.to_host(network(Tensor(x_t), t).data)
        eps = backend.to_host(eps_model(Tensor(x_t), t).data)
    expected = np.sqrt(1 - abar) * backend.to_host(x_t) + np.sqrt(abar) * v
    np.testing.assert_allclose(eps, expected, rtol=1e-4, atol=1e-5)


def test_prediction_and_schedule_are_checked_and_default_for_old_configs():
    with pytest.raises(ConfigError, match="prediction must be one of eps, x0, v"):
        resolve("quick", sets=["prediction=score"])
    with pytest.raises(ConfigError, match="schedule must be one of"):
        resolve("quick", sets=["schedule=cosin"])
    old = {k: v for k, v in resolve("mnist").items() if k != "prediction"}
    assert resolve(base=old)["prediction"] == "eps"
