"""Latent diffusion (lesson 10): the space x_0 lives in, a latent model's checkpoints and the
autoencoder they record, ``sample --out x.npz``, ``eval`` and ``bench ldm`` on a latent model,
and clear errors for the wrong autoencoder, the wrong kind of checkpoint and a latent shape
that does not fit the U-Net.  Everything at a tiny size: a 2x7x7 autoencoder, untrained."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from minidiff import backend
from minidiff.commands import sample as sample_cli
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.data.images import make_grid
from minidiff.models.autoencoder import AutoencoderKL
from minidiff.models.unet import UNet
from minidiff.optim import EMA
from minidiff.data.spaces import LatentSpace, PixelSpace, SpaceError, weights_sha256
from minidiff.pipelines.load import space_of
from minidiff.tensor import Tensor, no_grad
from minidiff.commands import train as train_cli
from minidiff.pipelines.load import load_autoencoder, load_pipeline
from minidiff.checkpoint import load_checkpoint, save_checkpoint
from minidiff.config.build import model_config
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer

AE_TINY = {"base_channels": 4, "channel_mults": [1, 2, 2], "latent_channels": 2, "groups": 2}
SCALE = 0.8
LDM_TINY = {"in_channels": 2, "out_channels": 2, "base_channels": 8, "num_res_blocks": 1,
            "T": 20, "batch_size": 4, "steps": 3, "warmup_steps": 1, "train_images": 16,
            "log_every": 0, "sample_every": 3, "checkpoint_every": 0, "diag_every": 3,
            "sample_count": 4, "sample_steps": 2}


def _quiet(_):
    pass


def write_autoencoder(path, seed: int):
    """An untrained tiny autoencoder (28x28 -> 2x7x7) saved as a finished run's ema.npz."""
    backend.manual_seed(seed)
    model = AutoencoderKL(**AE_TINY)
    config = resolve("ae-quick", overrides=AE_TINY)
    save_checkpoint(path, model=model, ema=EMA(model), config=config, step=1, ema_only=True,
                    extra={"scale_factor": np.asarray(SCALE, dtype=np.float64)})
    return model


@pytest.fixture(scope="module")
def images():
    return load_mnist("train")[0][:16]


@pytest.fixture(scope="module")
def run(tmp_path_factory, images):
    """A tiny latent model trained 3 steps on a tiny autoencoder: (folder, ae path, trainer)."""
    folder = tmp_path_factory.mktemp("ldm")
    ae_path = folder / "ae.npz"
    write_autoencoder(ae_path, seed=0)
    config = resolve("ldm-quick", overrides={**LDM_TINY, "autoencoder": str(ae_path)})
    trainer = Trainer(config, str(folder / "run"), images=images, log=_quiet)
    assert trainer.run() == "done"
    return folder, ae_path, trainer


def file_sha256(path) -> str:
    """sha256 of an autoencoder file's EMA arrays in sorted name order, read from the file."""
    arrays = backend.load_npz(path)
    digest = hashlib.sha256()
    for key in sorted(k for k in arrays if k.startswith("ema.")):
        value = np.ascontiguousarray(arrays[key], dtype=np.float32)
        digest.update(f"{key[4:]}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- spaces

def test_pixel_space_is_the_image_in_unit_range(images):
    space = PixelSpace().use(images)
    index = np.array([3, 1])
    np.testing.assert_allclose(backend.to_host(space.batch(index)),
                               images[index] / 127.5 - 1.0, atol=1e-6)
    assert space.clip_x0 and space.shape == (1, 28, 28)
    assert float(space.decode(backend.xp().full((1, 1, 2, 2), 3.0)).max()) == 1.0


def test_encode_once_gives_what_encode_gives(images):
    backend.manual_seed(1)
    model = AutoencoderKL(**AE_TINY)
    space = LatentSpace(model, SCALE).use(images, batch=5, log=_quiet)   # 4 batches, one short
    with no_grad():
        posterior = model.encode(Tensor(to_unit_range(images)))          # all at once
    mean, std = backend.to_host(posterior.mean.data), backend.to_host(posterior.std.data)
    index = np.array([0, 7, 15])
    np.testing.assert_allclose(backend.to_host(space.batch(index, draw=False)),
                               SCALE * mean[index], rtol=1e-5, atol=1e-6)
    # the draws z = s (mu + sigma eps) of one image: Monte Carlo mean and spread
    draws = np.stack([backend.to_host(space.batch(np.array([7]))[0]) for _ in range(2000)])
    se = SCALE * std[7] / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - SCALE * mean[7]) < 5 * se + 1e-6)
    np.testing.assert_allclose(draws.std(0), SCALE * std[7], rtol=0.1)
    assert not space.clip_x0 and space.shape == (2, 7, 7)


def test_weights_hash_names_the_weights():
    a, b = AutoencoderKL(**AE_TINY), AutoencoderKL(**AE_TINY)
    assert weights_sha256(a) == weights_sha256(a) != weights_sha256(b)
    b.load_state_dict(a.state_dict())
    assert weights_sha256(a) == weights_sha256(b)


# ----------------------------------------------------------------------------- checkpoints

def test_latent_checkpoint_round_trip(run):
    folder, ae_path, trainer = run
    expected = file_sha256(ae_path)
    for name in ("checkpoint.npz", "ema.npz"):
        arrays = load_checkpoint(folder / "run" / name)
        assert str(arrays["autoencoder.sha256"]) == expected
        assert arrays["config"]["autoencoder"] == str(ae_path)
    arrays = load_checkpoint(folder / "run" / "ema.npz")
    space = space_of(arrays)
    assert isinstance(space, LatentSpace) and space.shape == (2, 7, 7)
    assert space.scale_factor == pytest.approx(SCALE)
    # the exported network is the trainer's EMA network
    pipeline = load_pipeline(folder / "run" / "ema.npz", arrays=arrays)
    model, config = pipeline.eps(), pipeline.config
    z = backend.randn(2, 2, 7, 7)
    t = backend.to_device(np.array([3, 17]))
    with trainer.ema.swapped(), no_grad():
        trainer.model.eval()
        want = backend.to_host(trainer.eps_model(Tensor(z), t).data)
    with no_grad():
        got = backend.to_host(model(Tensor(z), t).data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    trainer.model.train()
    # the training grid and the x0 panel are decoded digits
    assert (folder / "run" / "samples_000003.png").stat().st_size > 100
    assert (folder / "run" / "x0_pred_000003.png").stat().st_size > 100


def test_resume_refuses_another_autoencoder(run, images, tmp_path):
    folder, ae_path, _ = run
    other = tmp_path / "other.npz"
    write_autoencoder(other, seed=5)
    config = resolve("ldm-quick", overrides={**LDM_TINY, "autoencoder": str(other)})
    trainer = Trainer(config, str(tmp_path / "r"), images=images, log=_quiet)
    with pytest.raises(SpaceError, match="trained on the autoencoder"):
        trainer.resume(folder / "run" / "checkpoint.npz")


def test_mismatched_autoencoder_is_refused_naming_both_hashes(run, tmp_path, capsys):
    folder, ae_path, _ = run
    moved = tmp_path / "ldm"
    shutil.copytree(folder, moved)                    # the ae.npz path is recorded: move it all
    checkpoint = folder / "run" / "ema.npz"
    swapped = tmp_path / "swapped.npz"
    write_autoencoder(swapped, seed=9)
    code = sample_cli.main(["--checkpoint", str(checkpoint), "--n", "2", "--steps", "2",
                            "--autoencoder", str(swapped), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("minidiff: ") and err.count("\n") == 1
    assert file_sha256(swapped)[:16] in err and file_sha256(ae_path)[:16] in err
    # the right autoencoder under another name is fine
    code = sample_cli.main(["--checkpoint", str(checkpoint), "--n", "2", "--steps", "2",
                            "--autoencoder", str(moved / "ae.npz"),
                            "--out", str(tmp_path / "g.png")])
    assert code == 0 and (tmp_path / "g.png").exists()


def test_missing_autoencoder_is_one_line(run, tmp_path, capsys):
    folder, _, _ = run
    code = sample_cli.main(["--checkpoint", str(folder / "run" / "ema.npz"), "--autoencoder",
                            str(tmp_path / "nope.npz"), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "autoencoder: checkpoint not found" in err


# ----------------------------------------------------------------------------- sample --out .npz

def test_sample_npz_holds_the_raw_digits(run, tmp_path):
    from PIL import Image
    folder, _, _ = run
    checkpoint = str(folder / "run" / "ema.npz")
    common = ["--checkpoint", checkpoint, "--n", "5", "--steps", "3", "--seed", "4"]
    assert sample_cli.main(common + ["--out", str(tmp_path / "d.npz")]) == 0
    assert sample_cli.main(common + ["--out", str(tmp_path / "d.png")]) == 0
    arrays = backend.load_npz(tmp_path / "d.npz")
    digits = arrays["images"]
    assert set(arrays) == {"images"}
    assert digits.dtype == np.uint8 and digits.shape == (5, 28, 28)
    assert len(np.unique(digits)) > 2
    # the PNG written from the same samples is the grid of exactly these digits
    png = np.asarray(Image.open(tmp_path / "d.png").convert("L"))
    assert np.array_equal(png, make_grid(digits[:, None]))


def test_sample_npz_of_a_pixel_model(tmp_path):
    config = resolve("quick", overrides={"base_channels": 8, "channel_mults": [1, 2],
                                         "num_res_blocks": 1, "T": 20, "image_size": 16,
                                         "sample_steps": 2})
    model = UNet(model_config(config))
    path = tmp_path / "pixel.npz"
    save_checkpoint(path, model=model, ema=EMA(model), config=config, step=0, ema_only=True)
    assert sample_cli.main(["--checkpoint", str(path), "--n", "3", "--steps", "2",
                            "--out", str(tmp_path / "p.npz")]) == 0
    digits = backend.load_npz(tmp_path / "p.npz")["images"]
    assert digits.dtype == np.uint8 and digits.shape == (3, 16, 16)


# ----------------------------------------------------------------------------- bad input

def test_autoencoder_checkpoint_given_to_sample(run, tmp_path, capsys):
    _, ae_path, _ = run
    code = sample_cli.main(["--checkpoint", str(ae_path), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "expected a diffusion checkpoint" in err and "'autoencoder'" in err


def test_autoencoder_without_scale_factor_is_refused(images, tmp_path):
    model = AutoencoderKL(**AE_TINY)
    path = tmp_path / "midrun.npz"
    save_checkpoint(path, model=model, ema=EMA(model), config=resolve("ae-quick",
                    overrides=AE_TINY), step=1, ema_only=True)
    assert load_autoencoder(path)[2] is None
    config = resolve("ldm-quick", overrides={**LDM_TINY, "autoencoder": str(path)})
    with pytest.raises(SpaceError, match="no latent scale factor"):
        Trainer(config, str(tmp_path / "r"), images=images, log=_quiet)


def test_latent_shape_that_does_not_fit_the_unet(run, tmp_path, capsys):
    _, ae_path, _ = run
    overrides = {**LDM_TINY, "autoencoder": str(ae_path), "in_channels": 3, "out_channels": 3}
    with pytest.raises(SpaceError, match=r"latents are 2x7x7 .* in_channels=3, image_size=7"):
        Trainer(resolve("ldm-quick", overrides=overrides), str(tmp_path / "r"), log=_quiet)
    code = train_cli.main(["--preset", "ldm-quick", "--set", f"autoencoder={ae_path}",
                           "--set", "image_size=8", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("minidiff: ") and "image_size=8" in err


# ----------------------------------------------------------------------------- eval and bench

def test_eval_decodes_a_latent_model(run, tmp_path):
    from minidiff.evaluate.model import evaluate
    folder, _, _ = run
    result = evaluate(folder / "run" / "ema.npz", n=6, steps=2, batch=4, reference_images=40,
                      floor=False, stats_dir=str(tmp_path / "stats"), quiet=True)
    assert result["space"].startswith("latents 2x7x7")
    assert "bits_per_dim" not in result
    assert np.isfinite(result["fid"]) and sum(result["class_histogram"]) == 6


def test_bench_ldm_json(run, tmp_path, capsys):
    from minidiff.bench import ldm as bench_ldm
    from minidiff.commands import bench as bench_command
    folder, _, _ = run
    pixel_config = resolve("quick", overrides={"base_channels": 8, "channel_mults": [1, 2],
                                               "T": 20, "sample_steps": 2})
    pixel = UNet(model_config(pixel_config))
    pixel_path = tmp_path / "quick.npz"
    save_checkpoint(pixel_path, model=pixel, ema=EMA(pixel), config=pixel_config, step=0,
                    ema_only=True)
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"quick.npz": {"fid": 100.0, "n": 10, "sampler": "ddim",
                                                 "steps": 2, "mean_confidence": 0.5}}))
    argv = ["--pixel", str(pixel_path), "--ldm", str(folder / "run" / "ema.npz"),
            "--batch", "2", "--sample-batch", "2", "--repeat", "1", "--no-memory",
            "--no-torch", "--figures", str(figures)]
    assert bench_command.ldm_main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for side in ("pixel", "latent"):
        for key in ("train_ms_per_image", "sample_ms_per_image"):
            assert 0 < result[side][key]["min_ms"] <= result[side][key]["median_ms"]
    assert result["latent"]["x0_shape"] == [2, 7, 7]
    assert result["latent"]["decode_ms_per_image"]["median_ms"] > 0
    assert result["pixel"]["quality"]["fid"] == 100.0 and result["latent"]["quality"] is None
    assert result["ratio_pixel_over_latent"]["sample_ms_per_image"] > 0
    assert result["torch"] is None
    assert bench_command.ldm_main(argv) == 0                  # the table prints too
    assert "pixel / latent" in capsys.readouterr().out
    probe = bench_ldm._probe(bench_command._ldm_parser().parse_args(argv + ["--probe", "ldm"]))
    assert probe["peak_growth_bytes"] >= 0
    assert bench_command.ldm_main(argv[:2] + ["--ldm", str(tmp_path / "none.npz")]) == 2


@pytest.mark.parametrize("conditioning", ["crossattn", "concat"])
def test_bench_side_from_config_feeds_the_conditioning(conditioning):
    """``Side.from_config`` (lesson 12) builds a conditioned U-Net that the samplers and
    ``training_step`` can call as ``model(x_t, t)``: the fixed context / extra channels really
    reach it (the cross-attention's key projection, or conv_in's weights for the extra
    channels, get a gradient), and ``config_memory`` measures it in a fresh process."""
    from minidiff.bench.ldm import CONTEXT_LENGTH, Side, config_memory, time_sides
    config = resolve("ldm-quick", overrides={"base_channels": 8, "T": 20, "sample_steps": 2})
    space = PixelSpace(config["image_size"], config["in_channels"])   # 4x7x7, the x_0 shape
    options = {"context_dim": 6} if conditioning == "crossattn" else {"concat_channels": 5}
    side = Side.from_config(config, space, 2, conditioning, **options)
    unet = side.model.unet
    plain = Side.from_config(config, space, 2, "plain").model
    assert unet.num_parameters() > plain.num_parameters()
    for parameter in side.model.parameters():   # no zero-initialised layer hides a path
        parameter.data[...] = 0.2 * backend.randn(*parameter.shape, dtype=parameter.dtype)
    side.optimizer.zero_grad()
    from minidiff.diffusion import training_step
    training_step(side.model, side.schedule, side.x0, target_type="v", x0_range=None).backward()
    if conditioning == "crossattn":
        assert side.model.context.shape == (1, CONTEXT_LENGTH, 6)
        grad, = [p.grad for name, p in unet.named_parameters()    # the middle block's keys
                 if name.startswith("mid_attention.cross") and name.endswith("k_proj.weight")]
    else:
        grad = unet.conv_in.weight.grad[:, config["in_channels"]:]
    assert grad is not None and float(np.abs(backend.to_host(grad)).max()) > 0
    times = time_sides({"a": side}, repeat=1, sample_batch=2, steps=2)
    assert times["a"]["sample"][0] > 0 and times["a"]["decode"][0] >= 0
    memory = config_memory(config, 2, **options)
    assert memory is not None and memory >= 0


def test_bench_side_from_conditioned_config():
    """Where lesson 11's switch exists, ``Side.from_conditioned_config`` times its real
    model (text encoder included) fed one fixed prompt and an all-masked image."""
    from minidiff.models.conditioned import ConditionedUNet
    from minidiff.bench.ldm import Side, config_memory, time_sides
    config = resolve("ldm-quick", overrides={"base_channels": 8, "T": 20, "sample_steps": 2,
                                             "conditioning": "hybrid", "context_dim": 8})
    autoencoder = AutoencoderKL(base_channels=8, latent_channels=4)
    side = Side.from_conditioned_config(config, LatentSpace(autoencoder, 1.0), 2, "hybrid")
    assert isinstance(side.model.model, ConditionedUNet)
    assert sorted(side.model.cond) == ["concat", "tokens"]
    side.train_step()
    assert time_sides({"a": side}, repeat=1, sample_batch=2, steps=2)["a"]["sample"][0] > 0
    shape = {"base_channels": 8, "latent_channels": 4}
    assert config_memory(config, 2, conditioned=True, autoencoder=shape) is not None


# ----------------------------------------------------------------------------- shipped files

SHIPPED_AE = "data/checkpoints/ae.npz"
SHIPPED_LDM = "data/checkpoints/ldm.npz"


def _require(*paths):
    import os
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        pytest.skip(f"not shipped: {', '.join(missing)}")


def test_ldm_quick_preset_fits_the_shipped_autoencoder():
    from minidiff.pipelines.load import space_from_config
    _require(SHIPPED_AE)
    space = space_from_config(resolve("ldm-quick"))
    assert space.shape == (4, 7, 7) and space.path == SHIPPED_AE
    assert 0.1 < space.scale_factor < 10


def test_shipped_ldm_records_the_shipped_autoencoder():
    _require(SHIPPED_AE, SHIPPED_LDM)
    arrays = load_checkpoint(SHIPPED_LDM)
    assert str(arrays["autoencoder.sha256"]) == file_sha256(SHIPPED_AE)
    assert arrays["config"]["autoencoder"] == SHIPPED_AE
    assert not any(k.startswith(("model.", "optim.")) for k in arrays)   # EMA only
    space = space_of(arrays)
    model = load_pipeline(SHIPPED_LDM, arrays=arrays).model
    assert space.shape == (model.config.in_channels, 7, 7)
