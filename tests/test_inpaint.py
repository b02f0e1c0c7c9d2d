"""``minidiff inpaint`` and the inpainting accuracy: the --image specs, the completions keep the
known pixels exactly (pixels and latents), image-major order, the outputs (.npz, the grid),
the method choice and its refusals, and ``minidiff eval --inpainting``."""
import json
import os

import numpy as np
import pytest

from minidiff import backend, commands as cli
from minidiff.data.mnist import load_mnist
from minidiff.diffusion import NoiseSchedule
from minidiff.pipelines.inpaint import InpaintError, complete, load_images, load_inpainter
from minidiff.data.masks import named_mask
from minidiff.data.spaces import PixelSpace

LDM = os.path.join("data", "checkpoints", "ldm.npz")


@pytest.fixture(scope="module")
def test_images():
    return load_mnist("test")[0]


def test_image_specs(test_images, tmp_path):
    images, source = load_images("test:7")
    assert images.shape == (1, 1, 28, 28) and source.tolist() == [7]
    np.testing.assert_array_equal(images[0], test_images[7])
    images, source = load_images("test:3-5,9,1")
    assert source.tolist() == [3, 4, 5, 9, 1]
    np.testing.assert_array_equal(images, test_images[[3, 4, 5, 9, 1]])
    from PIL import Image
    path = str(tmp_path / "digit.png")
    Image.fromarray(test_images[42, 0]).save(path)
    images, source = load_images(path)
    assert source.tolist() == [-1]
    np.testing.assert_array_equal(images[0], test_images[42])


@pytest.mark.parametrize("spec, words", [
    ("test:", "test:I"), ("test:a", "test:I"), ("train:3", "test:I"), ("test:1,,2", "test:I"),
    ("test:5-2", "backwards"), ("test:10000", "out of range"), ("test:9990-10000", "10000"),
    ("nope.png", "no such file"), ("{tmp}/big.png", "32x32")])
def test_bad_image_specs_name_the_argument(spec, words, tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(str(tmp_path / "big.png"))
    with pytest.raises(Exception) as caught:
        load_images(spec.format(tmp=tmp_path))
    assert "--image" in str(caught.value) and words in str(caught.value)


def _toy(x, t):
    return 0.2 * backend.array_of(x)


def test_completions_keep_the_known_pixels_in_image_major_order(test_images):
    sched = NoiseSchedule.linear(10, 1e-3, 0.2)
    mask = named_mask("bottom")
    images = test_images[[0, 1, 2]]
    out = complete(lambda x, m: _toy, sched, PixelSpace(), images, mask, n=4, steps=5,
                   batch=5)                            # chunks of 5 across the images
    assert out.shape == (12, 1, 28, 28) and out.dtype == np.uint8
    known = backend.to_host(named_mask("bottom")) == 0
    for i in range(12):
        np.testing.assert_array_equal(out[i, 0][known], images[i // 4, 0][known])
    assert len({out[i, 0][~known].tobytes() for i in range(4)}) == 4   # 4 different fills
    # with a seed, the same completions
    again = complete(lambda x, m: _toy, sched, PixelSpace(), images, mask, n=4, steps=5,
                     batch=5)
    np.testing.assert_array_equal(out, again)


def test_ddpm_with_a_learned_variance_keeps_the_known_pixels(test_images):
    """A network with 2C output channels (lesson 13): eps, then v = 0.5 (between beta~, beta)."""
    xp = backend.xp()
    sched = NoiseSchedule.linear(10, 1e-3, 0.2)

    def learned(x, t):
        x = backend.array_of(x)
        return xp.concatenate([0.2 * x, xp.full(x.shape, 0.5, dtype=x.dtype)], axis=1)
    mask = named_mask("left")
    out = complete(lambda x, m: learned, sched, PixelSpace(), test_images[:2], mask, n=2,
                   sampler="ddpm", variance="learned")
    known = backend.to_host(mask) == 0
    for i in range(4):
        np.testing.assert_array_equal(out[i, 0][known], test_images[i // 2, 0][known])
    assert (out[:, 0][:, ~known] != test_images[[0, 0, 1, 1], 0][:, ~known]).any()


def test_latent_replacement_pastes_the_known_pixels_back(test_images):
    eps_for, schedule, space, _, method = load_inpainter(LDM)
    assert method == "replace" and space.kind == "latent"
    mask = named_mask("box:4,4,20,18")
    out = complete(eps_for, schedule, space, test_images[:2], mask, n=2, steps=2, method=method)
    known = backend.to_host(mask) == 0
    for i in range(4):
        np.testing.assert_array_equal(out[i, 0][known], test_images[i // 2, 0][known])


def test_no_hidden_pixel_reaches_the_completions(test_images):
    """The pixels under the mask changed to anything: the same completions (latent replace:
    the encoder's receptive field would carry them into the known cells of E(image))."""
    eps_for, schedule, space, _, method = load_inpainter(LDM)
    mask = named_mask("bottom")
    hidden = backend.to_host(mask) > 0
    images = test_images[:2].copy()
    out = complete(eps_for, schedule, space, images, mask, n=2, steps=3, method=method)
    images[:, 0][:, hidden] = np.random.default_rng(0).integers(0, 256, (2, int(hidden.sum())))
    again = complete(eps_for, schedule, space, images, mask, n=2, steps=3, method=method)
    np.testing.assert_array_equal(out[:, 0][:, hidden], again[:, 0][:, hidden])


def test_the_method_and_conditioning_refusals():
    with pytest.raises(InpaintError, match="--method concat.*'none'"):
        load_inpainter(LDM, "concat")
    with pytest.raises(InpaintError, match="--prompt"):
        load_inpainter(LDM, prompt="a seven")
    with pytest.raises(InpaintError, match="--guidance"):
        load_inpainter(LDM, guidance=3.0)


def test_the_command_writes_the_npz_and_the_grid(tmp_path, capsys):
    out = str(tmp_path / "c.npz")
    assert cli.main(["inpaint", "--checkpoint", LDM, "--image", "test:3,1", "--n", "3",
                     "--steps", "2", "--mask", "top", "--out", out]) == 0
    arrays = np.load(out)
    assert arrays["images"].shape == (6, 28, 28) and arrays["images"].dtype == np.uint8
    assert arrays["source"].tolist() == [3, 3, 3, 1, 1, 1]
    np.testing.assert_array_equal(arrays["mask"],
                                  backend.to_host(named_mask("top")).astype(np.uint8))
    grid = str(tmp_path / "g.png")
    assert cli.main(["inpaint", "--checkpoint", LDM, "--image", "test:3,1", "--n", "3",
                     "--steps", "2", "--out", grid]) == 0
    from PIL import Image
    with Image.open(grid) as picture:      # 2 rows of 1 + 1 + 3 tiles, 30 px apart, scale 2
        assert picture.size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))


def test_eval_inpainting_reports_the_accuracy_and_its_bounds(capsys):
    assert cli.main(["eval", "--checkpoint", LDM, "--inpainting", "--n", "6", "--steps", "2",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6 and result["method"] == "replace" and result["steps"] == 2
    for key in ("accuracy", "masked_accuracy", "original_accuracy"):
        assert 0.0 <= result[key] <= 1.0 and result[key] * 6 == round(result[key] * 6)
    assert result["original_accuracy"] == 1.0      # the first 6 test digits are easy


def test_the_comparison_figure_has_a_row_per_digit_and_method(tmp_path):
    from PIL import Image

    from minidiff.evaluate.inpainting import compare_figure
    path = str(tmp_path / "compare.png")
    compare_figure([("ldm replace", LDM, "replace"),
                    ("ldm eta 1", LDM, "replace", {"eta": 1.0})], [3, 1],
                   path, n=2, steps=2)
    with Image.open(path) as picture:          # 2 digits x 2 methods = 4 rows of 30 px, scale 2
        assert picture.size[1] == 2 * (4 * 30 + 2) and picture.size[0] > 2 * (4 * 30 + 2)
