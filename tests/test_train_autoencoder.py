"""Training the autoencoder with the one trainer (lesson 09): the loss goes down, resumption is
exact, the checkpoint round trip (with the scale factor), and checkpoints of the wrong kind
are clear errors."""
import numpy as np
import pytest

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.tensor import no_grad
from minidiff.commands import train as cli
from minidiff.checkpoint import CheckpointError, load_checkpoint
from minidiff.pipelines.load import load_autoencoder, load_pipeline
from minidiff.config.checks import ConfigError
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer

AE_TINY = {"base_channels": 8, "channel_mults": [1, 2], "latent_channels": 2, "groups": 4,
           "image_size": 16, "batch_size": 8, "steps": 40, "warmup_steps": 2,
           "train_images": 200, "log_every": 0, "sample_every": 0, "checkpoint_every": 0,
           "diag_every": 0, "sample_count": 8, "ema_decay": 0.9, "lr": 3e-3,
           "scale_images": 100}
UNET_TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
             "attention_resolutions": [], "T": 50, "batch_size": 4, "image_size": 16,
             "steps": 2, "warmup_steps": 1, "train_images": 200, "log_every": 0,
             "sample_every": 0, "checkpoint_every": 0, "diag_every": 0, "sample_steps": 5}


@pytest.fixture(scope="module")
def images():
    """200 digits, centre-cropped to 16x16."""
    return load_mnist("train")[0][:200, :, 6:22, 6:22]


def ae(**changes):
    return resolve("ae-quick", overrides={**AE_TINY, **changes})


def _quiet(_):
    pass


def test_preset_and_config_checks():
    config = resolve("ae-quick")
    assert config["model"] == "autoencoder" and config["latent_channels"] == 4
    assert resolve("quick")["model"] == "unet"
    with pytest.raises(ConfigError, match="recon_loss"):
        resolve("ae-quick", sets=["recon_loss=l3"])
    with pytest.raises(ConfigError, match="model must be one of"):
        resolve("quick", sets=["model=gan"])
    with pytest.raises(ConfigError, match="needs the keys.*kl_weight.*ae-quick"):
        resolve("quick", sets=["model=autoencoder"])
    for item, words in (("latent_channels=0", "latent_channels must be an integer >= 1"),
                        ("kl_weight=-1", "kl_weight must be >= 0"),
                        ("scale_images=1.5", "scale_images must be an integer")):
        with pytest.raises(ConfigError, match=words):
            resolve("ae-quick", sets=[item])


def test_tiny_autoencoder_learns_and_round_trips(tmp_path, images):
    lines = []
    trainer = Trainer(ae(sample_every=40, log_every=20), str(tmp_path), images=images,
                      log=lines.append)
    assert trainer.run() == "done"
    first, last = np.mean(trainer.losses[:5]), np.mean(trainer.losses[-5:])
    assert last < 0.6 * first, (first, last)
    assert set(trainer.terms) == {"rec", "kl"} and len(trainer.terms["kl"]) == 40
    assert any("rec " in line and "kl " in line for line in lines)
    assert (tmp_path / "reconstructions_000040.png").exists()
    assert (tmp_path / "loss_rec.png").exists() and (tmp_path / "loss_kl.png").exists()

    # the export holds the EMA weights and the scale factor measured on them
    model, config, scale = load_autoencoder(tmp_path / "ema.npz")
    assert config["model"] == "autoencoder" and model.latent_shape == (2, 8, 8)
    arrays = load_checkpoint(tmp_path / "ema.npz")
    assert arrays["scale_factor"].dtype == np.float64 and arrays["scale_factor"].shape == ()
    x = to_unit_range(images[:100])
    with no_grad():
        z = backend.to_host(model.encode(x).mode().data)
        with trainer.ema.swapped():
            trainer.model.eval()
            expected = backend.to_host(trainer.model.encode(x).mode().data)
    np.testing.assert_array_equal(z, expected)
    # the scale factor is 1 / std of sampled latents: close to that of the means here
    assert scale == pytest.approx(1.0 / z.std(), rel=0.2)
    assert float(load_checkpoint(trainer.last_checkpoint)["scale_factor"]) == scale


def test_autoencoder_resume_is_exact(tmp_path, images):
    straight = Trainer(ae(steps=6), str(tmp_path / "a"), images=images, log=_quiet)
    straight.run()
    first = Trainer(ae(steps=6), str(tmp_path / "b"), images=images, log=_quiet)
    first.run(stop_at=3)
    backend.manual_seed(123)
    second = Trainer(ae(steps=6), str(tmp_path / "b"), images=images, log=_quiet)
    second.resume(first.last_checkpoint)
    second.run()
    assert second.losses == straight.losses and second.terms == straight.terms
    for a, b in zip(straight.ema.shadow, second.ema.shadow):
        assert (backend.to_host(a) == backend.to_host(b)).all()


def test_wrong_kind_of_checkpoint_is_a_clear_error(tmp_path, images, capsys):
    ae_run = Trainer(ae(steps=1), str(tmp_path / "ae"), images=images, log=_quiet)
    ae_run.run()
    unet_run = Trainer(resolve("quick", overrides=UNET_TINY), str(tmp_path / "unet"),
                       images=images, log=_quiet)
    unet_run.run()
    with pytest.raises(CheckpointError, match="expected a diffusion checkpoint.*autoencoder"):
        load_pipeline(tmp_path / "ae" / "ema.npz")
    with pytest.raises(CheckpointError, match="expected an autoencoder checkpoint.*unet"):
        load_autoencoder(tmp_path / "unet" / "ema.npz")
    with pytest.raises(CheckpointError, match="holds a 'autoencoder' model"):
        unet_run.resume(ae_run.last_checkpoint)
    from minidiff.commands import sample
    assert sample.main(["--checkpoint", str(tmp_path / "ae" / "ema.npz"),
                        "--out", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err
    assert "expected a diffusion checkpoint" in err and err.count("\n") == 1


def test_train_cli_trains_the_autoencoder(tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in AE_TINY.items() if k not in ("image_size", "train_images")]
    code = cli.main(["--preset", "ae-quick", "--out", str(tmp_path), "--steps", "2",
                     "--train-images", "64", *["--set=" + s for s in sets if "steps=" not in s]])
    assert code == 0, capsys.readouterr().err
    assert "scale factor" in capsys.readouterr().out
    assert load_autoencoder(tmp_path / "ema.npz")[2] > 0


def test_eval_reports_an_autoencoder(tmp_path, capsys):
    """``minidiff eval`` sees the autoencoder in the config and reports its figures."""
    from minidiff.commands import eval as evaluate
    config = resolve("ae-quick", overrides={**AE_TINY, "image_size": 28,
                                            "channel_mults": [1, 2, 4], "steps": 1,
                                            "train_images": 64})
    trainer = Trainer(config, str(tmp_path), images=load_mnist("train")[0][:64], log=_quiet)
    trainer.run()
    code = evaluate.main(["--checkpoint", str(tmp_path / "ema.npz"), "--n", "40",
                          "--reference-images", "60", "--no-floor", "--json",
                          "--stats-dir", str(tmp_path / "stats")])
    out = capsys.readouterr().out
    assert code == 0, out
    import json
    result = json.loads(out)
    assert result["model"] == "autoencoder" and result["n"] == 40
    assert 0 < result["mse"] <= 1 and result["psnr_db"] == pytest.approx(
        10 * np.log10(1 / result["mse"]))
    assert result["rfid"] > 0 and result["kl_per_dim"] > 0 and result["scale_factor"] > 0
    assert evaluate.main(["--checkpoint", str(tmp_path / "ema.npz"), "--n", "40",
                          "--reference-images", "60", "--no-floor",
                          "--stats-dir", str(tmp_path / "stats")]) == 0
    assert "rFID" in capsys.readouterr().out
