"""``minidiff sample`` and ``minidiff.data.images``: grids, GIF and strip from a checkpoint, and
one-line errors for a missing file, a non-checkpoint and a wrong-architecture checkpoint."""
import json

import pytest

from minidiff import backend
from minidiff.commands import sample as sample_cli
from minidiff.pipelines.sample import sample_images
from minidiff.data.images import make_grid, save_gif, save_grid, save_strip
from minidiff.models.unet import UNet
from minidiff.optim import EMA
from minidiff.pipelines.load import load_pipeline
from minidiff.checkpoint import load_checkpoint, save_checkpoint
from minidiff.config.build import model_config
from minidiff.config.presets import resolve

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "T": 20, "image_size": 16, "sample_steps": 5}


@pytest.fixture
def checkpoint(tmp_path):
    """An EMA-only checkpoint of an untrained tiny U-Net on 16x16 images."""
    config = resolve("quick", overrides=TINY)
    model = UNet(model_config(config))
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, model=model, ema=EMA(model), config=config, step=0, ema_only=True)
    return path


def test_grid_layout():
    images = backend.host.full((5, 1, 4, 4), 255, dtype=backend.host.uint8)
    grid = make_grid(images, nrow=3, pad=1, scale=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert grid[1:5, 1:5].min() == 255 and grid[0].max() == 0
    with pytest.raises(ValueError, match="uint8"):
        make_grid(images.astype(backend.host.float32))


def test_writers(tmp_path):
    from PIL import Image
    frames = [backend.host.zeros((4, 1, 8, 8), dtype=backend.host.uint8) + 60 * i
              for i in range(3)]
    save_grid(frames[0], tmp_path / "g.png")
    save_gif(frames, tmp_path / "a.gif")
    save_strip(backend.host.concatenate([f[:1] for f in frames]), tmp_path / "s.png")
    assert Image.open(tmp_path / "a.gif").n_frames == 3
    width, height = Image.open(tmp_path / "s.png").size
    assert width > 2 * height


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_command_writes_grid_gif_strip(tmp_path, checkpoint, sampler, capsys):
    out, gif, strip = tmp_path / "g.png", tmp_path / "a.gif", tmp_path / "s.png"
    code = sample_cli.main(["--checkpoint", str(checkpoint), "--sampler", sampler,
                            "--steps", "4", "--n", "4", "--out", str(out), "--gif", str(gif),
                            "--strip", str(strip), "--frames", "4"])
    assert code == 0 and out.exists() and gif.exists() and strip.exists()
    assert "wrote" in capsys.readouterr().out


def test_same_seed_same_digits(checkpoint):
    pipeline = load_pipeline(checkpoint)
    model, schedule, space = pipeline.eps(), pipeline.schedule, pipeline.space
    a, _ = sample_images(model, schedule, space, 2, "ddim", steps=3, seed=5)
    b, _ = sample_images(model, schedule, space, 2, "ddim", steps=3, seed=5)
    assert (backend.to_host(a) == backend.to_host(b)).all() and a.shape == (2, 1, 16, 16)


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("minidiff: ") and err.count("\n") == 1
    assert "Traceback" not in err
    return err


def test_missing_checkpoint_names_path(tmp_path, capsys):
    path = str(tmp_path / "nowhere.npz")
    err = _one_line_error(capsys, sample_cli.main(["--checkpoint", path]))
    assert path in err


def test_plain_weights_file_is_refused(tmp_path, capsys):
    path = tmp_path / "weights.npz"
    UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()
            if k not in ("T", "sample_steps")}).save(path)
    err = _one_line_error(capsys, sample_cli.main(["--checkpoint", str(path)]))
    assert "not a minidiff training checkpoint" in err


def test_wrong_architecture_lists_keys(tmp_path, checkpoint, capsys):
    arrays = load_checkpoint(checkpoint)
    config = dict(arrays["config"], base_channels=16)
    arrays["config"] = backend.host.asarray(json.dumps(config))
    backend.save_npz(tmp_path / "bad.npz", arrays)
    err = _one_line_error(capsys, sample_cli.main(["--checkpoint", str(tmp_path / "bad.npz")]))
    assert "wrong shapes" in err and "conv_in.weight" in err
