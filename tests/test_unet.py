"""The U-Net: the reference configuration's size, shapes, hooks, and gradients (small config)."""
import math

import numpy as np
import pytest

import minidiff as md
from minidiff import backend
from minidiff.models import REFERENCE_CONFIG, UNet, UNetConfig, timestep_embedding
from minidiff.gradcheck import gradcheck

TINY = dict(base_channels=4, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_heads=2, groups=2, time_embed_dim=8, image_size=4)


def test_reference_configuration_has_the_published_parameter_count():
    assert UNet(REFERENCE_CONFIG).num_parameters() == 1_623_169


def test_timestep_embedding_matches_the_formula_written_out():
    t = np.array([0, 1, 17, 999])
    emb = timestep_embedding(t, 32).numpy()
    for row, step in enumerate(t):
        for i in range(16):
            omega = math.exp(-math.log(10000) * i / 16)
            assert emb[row, i] == pytest.approx(math.cos(step * omega), abs=1e-6)
            assert emb[row, 16 + i] == pytest.approx(math.sin(step * omega), abs=1e-6)


def test_output_has_the_input_shape_and_depends_on_t():
    model = UNet(**TINY)
    x = md.Tensor(backend.randn(3, 1, 4, 4))
    a = model(x, np.array([0, 0, 0]))
    b = model(x, np.array([500, 500, 500]))
    assert a.shape == (3, 1, 4, 4) and a.dtype == np.float32
    assert np.abs(a.numpy() - b.numpy()).max() > 1e-4


def test_patches_keep_the_shapes_and_move_the_levels_down():
    """With patch_size 2 the network takes and returns full-size images, and its first level
    runs at half the size: conv_in reads 4 channels of an 8x8 image as 2 x 2 patches."""
    model = UNet(**{**TINY, "image_size": 8, "attention_resolutions": (2,)}, patch_size=2)
    assert model.conv_in.weight.shape[1] == 4 and model.conv_out.weight.shape[0] == 4
    assert len(model.down[1].attentions) == 1      # level 1 is at 8 / 2 / 2 = 2 pixels
    out = model(md.Tensor(backend.randn(3, 1, 8, 8)), np.array([0, 10, 999]))
    assert out.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError,
                       match=r"cannot be halved 1 time\(s\) by its Downsamples after 2x2 patches"):
        model(md.Tensor(backend.randn(1, 1, 6, 6)), np.array([1]))


def test_wrong_input_channels_are_named():
    with pytest.raises(ValueError, match=r"x must be \(N, 1, H, W\), got \(2, 3, 4, 4\)"):
        UNet(**TINY)(md.Tensor(backend.randn(2, 3, 4, 4)), np.array([1, 2]))


def test_conditioning_hooks_change_the_output():
    model = UNet(**TINY, concat_channels=2, context_dim=6)
    for name, p in model.named_parameters():   # the transformers start as the identity
        if "proj_out" in name:
            p.data = backend.randn(*p.shape)
    x = md.Tensor(backend.randn(2, 1, 4, 4))
    t = np.array([3, 4])
    concat = md.Tensor(backend.randn(2, 2, 4, 4))
    context1, context2 = (md.Tensor(backend.randn(2, 5, 6)) for _ in range(2))
    out1 = model(x, t, concat=concat, context=context1).numpy()
    out2 = model(x, t, concat=concat, context=context2).numpy()
    out3 = model(x, t, concat=concat * 2, context=context1).numpy()
    assert out1.shape == (2, 1, 4, 4)
    assert np.abs(out1 - out2).max() > 1e-6 and np.abs(out1 - out3).max() > 1e-6
    with pytest.raises(ValueError, match="concat must have 2 channels"):
        model(x, t)
    with pytest.raises(ValueError, match="a context .* is needed"):
        model(x, t, concat=concat)


def test_state_dict_round_trip_gives_the_same_function(tmp_path):
    a, b = UNet(**TINY), UNet(**TINY)
    x = md.Tensor(backend.randn(2, 1, 4, 4))
    t = np.array([1, 2])
    a.save(tmp_path / "unet.npz")
    b.load(tmp_path / "unet.npz")
    np.testing.assert_array_equal(a(x, t).numpy(), b(x, t).numpy())


@pytest.mark.parametrize("patch", [1, 2])
def test_gradients_match_finite_differences_in_float64(patch):
    backend.set_default_dtype("float64")
    try:
        model = UNet(**{**TINY, "image_size": 4 * patch}, patch_size=patch)
        x = md.Tensor(backend.randn(2, 1, 4 * patch, 4 * patch), requires_grad=True)
        t = np.array([5, 900])
        # the input and a handful of parameters from every kind of layer
        gradcheck(lambda x: model(x, t), x)
        picked = [p for name, p in model.named_parameters()
                  if name in ("conv_in.bias", "time_mlp1.bias", "mid_attention.qkv.bias",
                              "down.0.blocks.0.norm1.weight", "conv_out.bias")]
        assert len(picked) == 5
        for p in picked:
            gradcheck(lambda p: model(x, t), p)
    finally:
        backend.set_default_dtype("float32")
