"""``minidiff inpaint`` with models trained for it (``conditioning`` concat / hybrid, branch
cond): concat is their default, the condition reaches the network and hides every pixel under
the mask, replace works on them too, and prompts are checked before any sampling."""
import numpy as np
import pytest

from minidiff import backend, commands as cli
from minidiff.config.presets import with_defaults
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.pipelines.inpaint import InpaintError, complete, image_guidance_for, load_inpainter
from minidiff.data.masks import named_mask
from tests.tiny_models import train_tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny 28x28 pixel-space models trained for two steps: concat and hybrid."""
    return {kind: train_tiny(tmp_path_factory.mktemp(kind), kind)
            for kind in ("concat", "hybrid")}


@pytest.fixture(scope="module")
def test_images():
    return load_mnist("test")[0][:2]


@pytest.mark.parametrize("kind", ["concat", "hybrid"])
def test_concat_is_the_default_and_hides_the_masked_pixels(models, test_images, kind):
    eps_for, schedule, space, config, method = load_inpainter(models[kind])
    assert method == "concat" and config["conditioning"] == kind
    mask = named_mask("bottom")
    hidden = backend.to_host(mask) > 0
    out = complete(eps_for, schedule, space, test_images, mask, n=2, steps=3, method=method)
    for i in range(4):                                # known pixels pasted back
        np.testing.assert_array_equal(out[i, 0][~hidden], test_images[i // 2, 0][~hidden])
    changed = test_images.copy()
    changed[:, 0][:, hidden] = 255 - changed[:, 0][:, hidden]
    again = complete(eps_for, schedule, space, changed, mask, n=2, steps=3, method=method)
    np.testing.assert_array_equal(out, again)      # only hidden pixels changed: no trace
    # the known part does reach the network: other known pixels, other completions
    other = complete(eps_for, schedule, space, test_images[::-1], mask, n=2, steps=3,
                     method=method)
    assert not np.array_equal(out[:2, 0][:, hidden], other[2:, 0][:, hidden])


def test_replace_on_a_concat_model_generates_from_nothing_around_the_known_part(models,
                                                                              test_images):
    eps_for, schedule, space, _, method = load_inpainter(models["concat"], "replace")
    assert method == "replace"
    mask = named_mask("left")
    known = backend.to_host(mask) == 0
    out = complete(eps_for, schedule, space, test_images, mask, n=1, steps=3, method=method)
    np.testing.assert_array_equal(out[:, 0][:, known], test_images[:, 0][:, known])


def test_prompts_on_the_conditioned_models(models, tmp_path, capsys):
    with pytest.raises(InpaintError, match="--prompt.*'concat'"):
        load_inpainter(models["concat"], prompt="a seven")
    with pytest.raises(Exception, match="nonesuch"):
        load_inpainter(models["hybrid"], prompt="a nonesuch seven")
    out = str(tmp_path / "c.npz")
    assert cli.main(["inpaint", "--checkpoint", models["hybrid"], "--image", "test:0",
                     "--prompt", "a seven", "--guidance", "2", "--n", "2", "--steps", "2",
                     "--out", out]) == 0
    assert np.load(out)["images"].shape == (2, 28, 28)


def _bottom_half_hidden(test_images, seed: int, steps):
    """(x, m, x_t, t): the digits on [-1, 1], the bottom-half mask, a noisy state drawn with
    ``seed`` and the timesteps ``steps``, for evaluating one eps of an inpainting model."""
    x = to_unit_range(test_images)
    m = backend.xp().broadcast_to(backend.to_device(named_mask("bottom")), x.shape)
    backend.manual_seed(seed)
    return x, m, backend.randn(*x.shape), backend.to_device(np.array(steps))


@pytest.mark.parametrize("kind,prompt", [("concat", None), ("hybrid", "a seven")])
def test_image_guidance_is_the_guidance_formula_over_the_known_part(models, test_images, kind,
                                                                   prompt):
    """eps~ = eps(nothing known) + s (eps(masked image) - eps(nothing known)), each term from
    the unguided model's own eps on its own (nothing known: the all-covering mask), the
    caption the same in both.  Would catch the two conditions swapped, s used as 1 + s, or an
    "unconditional" half that still sees the image (guidance the identity)."""
    # guidance 1 over the caption: the plain conditional model (11.4)
    plain_for = load_inpainter(models[kind], prompt=prompt,
                               guidance=None if prompt is None else 1.0)[0]
    x, m, x_t, t = _bottom_half_hidden(test_images, 3, [3, 7])
    eps_c = backend.to_host(plain_for(x, m)(x_t, t).data)
    eps_u = backend.to_host(plain_for(x, backend.xp().ones_like(m))(x_t, t).data)
    assert np.abs(eps_c - eps_u).max() > 1e-3            # the image does reach the network
    for s in (0.0, 1.0, 2.5):
        guided_for = load_inpainter(models[kind], prompt=prompt, image_guidance=s)[0]
        got = backend.to_host(guided_for(x, m)(x_t, t).data)
        np.testing.assert_allclose(got, eps_u + s * (eps_c - eps_u), rtol=1e-4, atol=1e-5)


def test_image_guidance_refuses_what_it_cannot_do(models, tmp_path, capsys):
    with pytest.raises(InpaintError, match="--image-guidance: expected the concat method"):
        load_inpainter(models["concat"], "replace", image_guidance=2.0)
    with pytest.raises(InpaintError, match="--image-guidance: expected it without --guidance"):
        load_inpainter(models["hybrid"], prompt="a seven", guidance=2.0, image_guidance=2.0)
    assert cli.main(["eval", "--checkpoint", models["concat"], "--image-guidance", "2"]) == 2
    assert "--image-guidance: only with --inpainting" in capsys.readouterr().err
    out = str(tmp_path / "g.npz")
    assert cli.main(["inpaint", "--checkpoint", models["concat"], "--image", "test:0",
                     "--image-guidance", "2", "--n", "1", "--steps", "2", "--out", out]) == 0
    assert np.load(out)["images"].shape == (1, 28, 28)


def test_the_config_sets_the_default_image_guidance(models, test_images, tmp_path):
    """A concat completion without a caption runs at the config's ``image_guidance`` (the
    inpaint-quick preset: 2); an explicit scale, a caption or a caption guidance overrides
    it, and 1 is the plain model.  Would catch the default ignored, or applied on top of a
    caption's guidance."""
    config = {"image_guidance": 2.5}
    assert image_guidance_for(config, "concat") == 2.5
    assert image_guidance_for(config, "concat", image_guidance=1.0) == 1.0
    assert image_guidance_for({"image_guidance": 1.0}, "concat") is None   # one pass
    assert image_guidance_for(config, "concat", image_guidance=3.0) == 3.0
    assert image_guidance_for(config, "concat", prompt="a seven") is None
    assert image_guidance_for(config, "concat", guidance=2.0) is None
    assert image_guidance_for(config, "replace") is None
    assert image_guidance_for(with_defaults({}), "concat") is None   # written before the key
    guided_path = train_tiny(tmp_path, "concat", image_guidance=2.5)
    x, m, x_t, t = _bottom_half_hidden(test_images, 4, [2, 8])

    def eps(**options):
        return backend.to_host(load_inpainter(guided_path, **options)[0](x, m)(x_t, t).data)
    np.testing.assert_array_equal(eps(), eps(image_guidance=2.5))
    assert np.abs(eps() - eps(image_guidance=1.0)).max() > 1e-4
