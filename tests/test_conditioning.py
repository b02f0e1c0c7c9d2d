"""Conditioning (lesson 11): cross-attention and tau_theta checked against finite differences
and written-out formulas, padding that is never read, the switch, caption dropout, the concat
input that hides every pixel under the mask, classifier-free guidance's end points, and
conditional checkpoints that round-trip and resume exactly."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.config.build import build_model
from minidiff.diffusion.guidance import conditional_eps_model, guided
from minidiff.models.conditioned import ConditionedUNet, ConditionError
from minidiff.pipelines.conditions import concat_input, sampling_cond
from minidiff.pipelines.load import load_pipeline
from minidiff.train.conditioner import Conditioner
from minidiff.data.captions import VOCABULARY
from minidiff.data.mnist import load_mnist
from minidiff.diffusion import training_step
from minidiff.models.blocks import SpatialTransformer
from minidiff.models.text_encoder import TextEncoder, key_mask
from minidiff.models.unet import UNet
from minidiff.data.spaces import PixelSpace
from minidiff.tensor import Tensor, no_grad
from minidiff.gradcheck import gradcheck
from minidiff.config.checks import ConfigError
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer

FAST = settings(deadline=None, max_examples=8)

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [8], "T": 50, "batch_size": 4, "image_size": 16, "steps": 4,
        "warmup_steps": 1, "train_images": 64, "log_every": 0, "sample_every": 0,
        "checkpoint_every": 0, "diag_every": 0, "sample_count": 10, "sample_steps": 2,
        "ema_decay": 0.9, "lr": 1e-3, "context_dim": 8, "text_heads": 2, "text_layers": 1}


@pytest.fixture(scope="module")
def data():
    """64 digits centre-cropped to 16x16, with their labels."""
    images, labels = load_mnist("train")
    return images[:64, :, 6:22, 6:22], labels[:64]


def tiny(kind, **changes):
    return resolve("quick", overrides={**TINY, "conditioning": kind, **changes})


def _h(value):
    return backend.to_host(backend.array_of(value)).astype(np.float64)


def _randomise(module, scale=0.3):
    """Non-zero output projections (a new SpatialTransformer is the identity)."""
    for name, p in module.named_parameters():
        if "proj_out" in name:
            p.data = scale * backend.randn(*p.shape, dtype=p.dtype)
    return module


@pytest.fixture
def float64():
    backend.set_default_dtype("float64")
    yield
    backend.set_default_dtype("float32")


# ------------------------------------------------------------------------------- cross-attention
@FAST
@given(st.integers(1, 2), st.sampled_from([(2, 2), (3, 2)]), st.integers(1, 4),
       st.sampled_from([1, 2]), st.integers(0, 2 ** 16))
def test_spatial_transformer_gradcheck_with_a_key_padding_mask(n, size, keys, heads, seed):
    backend.set_default_dtype("float64")
    try:
        backend.manual_seed(seed)
        rng = np.random.default_rng(seed)
        block = _randomise(SpatialTransformer(4, heads, 2, context_dim=3))
        x = Tensor(backend.to_device(rng.standard_normal((n, 4, *size))), requires_grad=True)
        context = Tensor(backend.to_device(rng.standard_normal((n, keys, 3))),
                         requires_grad=True)
        mask = rng.random((n, keys)) < 0.6
        mask[:, 0] = True                              # tau_theta's start key is never masked
        mask = backend.to_device(mask)
        attn = block.cross_attention
        assert gradcheck(lambda a, c, *p: block(a, c, mask), x, context, attn.q_proj.weight,
                         attn.k_proj.weight, attn.v_proj.bias, attn.out_proj.weight,
                         block.proj_out.weight)
    finally:
        backend.set_default_dtype("float32")


def test_cross_attention_is_its_formula_with_padding_masked(float64):
    """Q from the pixels, K and V from the context, one softmax per head over the unmasked
    keys only: written out with a loop over heads and items."""
    backend.manual_seed(4)
    rng = np.random.default_rng(4)
    block = _randomise(SpatialTransformer(4, 2, 2, context_dim=3))
    tokens = rng.standard_normal((2, 6, 4))            # (B, pixels, C) after norm2
    context = rng.standard_normal((2, 5, 3))
    mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=bool)
    attn = block.cross_attention
    got = _h(attn(Tensor(backend.to_device(tokens)), Tensor(backend.to_device(context)),
                  backend.to_device(mask.reshape(2, 1, 1, 5))))
    w = {name: _h(p) for name, p in attn.named_parameters()}
    q = tokens @ w["q_proj.weight"].T + w["q_proj.bias"]
    k = context @ w["k_proj.weight"].T + w["k_proj.bias"]
    v = context @ w["v_proj.weight"].T + w["v_proj.bias"]
    out = np.zeros_like(q)
    for b in range(2):
        keep = mask[b]
        for head in range(2):
            sl = slice(2 * head, 2 * head + 2)
            s = q[b, :, sl] @ k[b][keep][:, sl].T / np.sqrt(2)
            p = np.exp(s - s.max(1, keepdims=True))
            out[b, :, sl] = (p / p.sum(1, keepdims=True)) @ v[b][keep][:, sl]
    want = out @ w["out_proj.weight"].T + w["out_proj.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_masked_context_is_never_read_and_a_new_block_is_the_identity():
    backend.manual_seed(1)
    block = SpatialTransformer(8, 2, 2, context_dim=4)
    x = Tensor(backend.randn(2, 8, 3, 3))
    context = backend.randn(2, 5, 4)
    mask = backend.to_device(np.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], dtype=bool))
    with no_grad():
        np.testing.assert_array_equal(_h(block(x, Tensor(context), mask)), _h(x))
        _randomise(block)
        before = _h(block(x, Tensor(context), mask))
        changed = context.copy()
        changed[~mask] = 100.0                          # garbage at every padded key
        after = _h(block(x, Tensor(changed), mask))
        changed[0, 0] += 1.0                            # an attended key does count
        moved = _h(block(x, Tensor(changed), mask))
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert np.abs(moved - before).max() > 1e-4


def test_text_encoder_reads_no_padding_and_no_python_loop_over_heads():
    backend.manual_seed(2)
    encoder = TextEncoder(len(VOCABULARY), context_dim=8, layers=2, heads=2, max_tokens=6)
    short = backend.to_device(np.array([[3, 21, 0], [5, 0, 0]], dtype=np.int64))
    long = backend.to_device(np.array([[3, 21, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0]],
                                      dtype=np.int64))
    with no_grad():
        a, b = _h(encoder(short)), _h(encoder(long))
    assert a.shape == (2, 4, 8) and b.shape == (2, 7, 8)      # the start vector + L tokens
    keep = _h(key_mask(short)).astype(bool)
    np.testing.assert_allclose(a[keep], b[:, :4][keep], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_tokens = 6"):
        encoder(backend.to_device(np.zeros((1, 7), dtype=np.int64)))
    with pytest.raises(ValueError, match="token ids"):
        encoder(backend.to_device(np.full((1, 2), len(VOCABULARY), dtype=np.int64)))


def test_text_encoder_gradcheck(float64):
    backend.manual_seed(5)
    encoder = TextEncoder(12, context_dim=4, layers=1, heads=2, max_tokens=3)
    tokens = backend.to_device(np.array([[1, 7, 0], [0, 0, 0]], dtype=np.int64))
    assert gradcheck(lambda *p: encoder(tokens), encoder.token_embedding.weight,
                     encoder.start, encoder.blocks[0].attention.k_proj.weight,
                     encoder.norm.weight)


# ------------------------------------------------------------------------------- the switch
def test_build_model_is_one_type_for_every_conditioning_and_none_is_a_plain_unet():
    none = build_model(tiny("none"))
    assert type(none) is ConditionedUNet and type(none.unet) is UNet
    assert none.text_encoder is None and none.unet.config.concat_channels == 0
    text = build_model(tiny("crossattn"))
    concat = build_model(tiny("concat"))
    hybrid = build_model(tiny("hybrid"))
    assert text.text_encoder is not None and text.unet.config.concat_channels == 0
    assert concat.text_encoder is None and concat.unet.config.concat_channels == 2
    assert hybrid.text_encoder is not None and hybrid.unet.config.concat_channels == 2
    assert hybrid.unet.config.context_dim == 8 and concat.unet.config.context_dim is None
    x, t = Tensor(backend.randn(2, 1, 16, 16)), np.array([1, 2])
    with pytest.raises(ConditionError, match=r"keys \['tokens', 'concat'\]"):
        hybrid(x, t, {"tokens": backend.to_device(np.zeros((2, 8), dtype=np.int64))})
    from minidiff.data.captions import Tokenizer
    with pytest.raises(ConditionError, match="give both"):
        sampling_cond(tiny("hybrid"), 2, tokenizer=Tokenizer(8),
                                   space=PixelSpace(16), masks=np.ones((2, 1, 16, 16)))
    with pytest.raises(ConditionError, match="--prompt"):
        sampling_cond(tiny("concat"), 2, prompts=["two", "two"],
                                   space=PixelSpace(16))
    with pytest.raises(ConfigError, match="conditioning"):
        tiny("text")
    with pytest.raises(ConfigError, match="text_heads"):
        tiny("crossattn", text_heads=3)


def test_caption_dropout_rate_is_binomial(data):
    """Real captions always name the digit, so all-padding rows are exactly the dropped ones:
    their count over 4,000 items must be Binomial(4000, p) (within 5 standard deviations)."""
    images, labels = data
    config = tiny("crossattn", caption_dropout=0.3)
    conditioner = Conditioner(config, images, labels, PixelSpace(16))
    backend.manual_seed(0)
    index = np.arange(4000) % 64
    tokens = backend.to_host(conditioner.batch(index)["tokens"])
    empty = int((tokens == 0).all(axis=1).sum())
    n, p = 4000, 0.3
    assert abs(empty - n * p) < 5 * np.sqrt(n * p * (1 - p)), empty
    kept = conditioner.tokenizer.decode(tokens[~(tokens == 0).all(axis=1)][:50])
    from minidiff.data.captions import DIGIT_WORDS, NUMERALS
    for text, label in zip(kept, labels[index][~(tokens == 0).all(axis=1)][:50]):
        assert DIGIT_WORDS[label] in text.split() or NUMERALS[label] in text.split()


def test_no_pixel_under_the_mask_reaches_concat(data):
    """Change every pixel to fill: cond["concat"] does not change (pixel and latent spaces);
    change one known pixel: it does."""
    from minidiff.data.masks import mask_to_grid, named_mask
    from minidiff.models.autoencoder import AutoencoderKL
    from minidiff.data.spaces import LatentSpace
    backend.manual_seed(0)
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32))
    mask = backend.to_device(np.stack([named_mask(s) for s in ("bottom", "left",
                                                                "box:3,4,20,9")])[:, None])
    other = backend.xp().where(mask > 0, backend.randn(3, 1, 28, 28) * 50, x)
    encoder = AutoencoderKL(base_channels=8, channel_mults=(1, 2, 4), num_res_blocks=1,
                            groups=4, latent_channels=2)
    for space in (PixelSpace(28), LatentSpace(encoder, 0.7)):
        a = _h(concat_input(space, x, mask))
        b = _h(concat_input(space, other, mask))
        np.testing.assert_array_equal(a, b)
        assert a.shape[1] == 1 + space.shape[0] and a.shape[-1] == space.shape[-1]
        np.testing.assert_array_equal(a[:, 0] > 0, _h(mask_to_grid(
            mask, space.shape[-1]))[:, 0] > 0)
        moved = x.copy()
        moved[mask == 0] += 0.5                          # known pixels do reach it
        assert np.abs(_h(concat_input(space, moved, mask)) - a).max() > 1e-4
    # the training batch: the same draws, different content under its masks
    images, labels = data
    conditioner = Conditioner(tiny("hybrid"), images, labels, PixelSpace(16))
    backend.manual_seed(3)
    first = _h(conditioner.batch(np.arange(16))["concat"])
    to_fill = first[:, :1] > 0
    assert 0 < to_fill.mean() < 1
    conditioner.images = np.where(to_fill, 255 - images[:16], images[:16]).astype(np.uint8)
    backend.manual_seed(3)
    np.testing.assert_array_equal(_h(conditioner.batch(np.arange(16))["concat"]), first)


# ------------------------------------------------------------------------------- guidance
def _text_model(config):
    backend.manual_seed(7)
    model = _randomise(build_model(config), 0.5).eval()
    for name, p in model.named_parameters():
        if "embedding" in name:
            p.data = p.data * 50.0                        # a caption that matters
    return model


def test_guidance_end_points_and_sign():
    """s = 0 is the unconditional forward, s = 1 the conditional one, s = 3 is
    u + 3 (c - u) -- each against two separate forwards; one doubled batch underneath."""
    config = tiny("crossattn", prediction="eps")
    model = _text_model(config)
    tokenizer_cond, uncond = sampling_cond(
        config, 3, prompts=["a thick seven", "2", "an eight"],
        tokenizer=__import__("minidiff.data.captions", fromlist=["Tokenizer"]).Tokenizer(8))
    cond = tokenizer_cond
    x, t = Tensor(backend.randn(3, 1, 16, 16)), backend.to_device(np.array([5, 20, 40]))
    eps = conditional_eps_model(model, None, "eps")
    with no_grad():
        c, u = _h(model(x, t, cond)), _h(model(x, t, uncond))
        assert np.abs(c - u).max() > 1e-3
        calls = []

        def counting(x_t, steps, both):
            calls.append(x_t.shape[0])
            return eps(x_t, steps, both)
        for scale, want in ((0.0, u), (1.0, c), (3.0, u + 3.0 * (c - u))):
            got = _h(guided(counting, cond, uncond, scale)(x, t))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert calls == [6, 6, 6]


def test_guidance_keeps_extra_variance_channels_from_the_conditional_half():
    def fake(x_t, t, cond):                       # 2C channels: eps | variance value
        value = backend.array_of(cond["tokens"])[:, :1, None, None].astype(np.float32)
        return Tensor(backend.xp().concatenate([x_t.data * 0 + value] * 2, axis=1))
    cond = {"tokens": backend.to_device(np.full((2, 3), 4, dtype=np.int64))}
    uncond = {"tokens": backend.to_device(np.zeros((2, 3), dtype=np.int64))}
    out = _h(guided(fake, cond, uncond, 2.5)(Tensor(backend.randn(2, 1, 4, 4)),
                                                         np.array([1, 2])))
    np.testing.assert_allclose(out[:, 0], 10.0)   # 0 + 2.5 (4 - 0)
    np.testing.assert_allclose(out[:, 1], 4.0)    # the conditional half's


# ------------------------------------------------------------------------------- training
def test_training_step_cuts_cond_to_each_part(data):
    """Two data-parallel halves: the mean of their losses is the whole batch's loss, and each
    half's model sees its own rows of cond."""
    images, labels = data
    config = tiny("hybrid")
    model = _text_model(config)
    conditioner = Conditioner(config, images, labels, PixelSpace(16))
    from minidiff.data.mnist import to_unit_range
    backend.manual_seed(1)
    x0 = to_unit_range(images[:8])
    cond = conditioner.batch(np.arange(8))
    losses = []
    for part in (None, slice(0, 4), slice(4, 8)):
        backend.manual_seed(9)
        with no_grad():
            losses.append(training_step(model, _schedule(config), x0, part=part,
                                        cond=cond).item())
    assert losses[0] == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-5)


def _schedule(config):
    from minidiff.config.build import schedule_from_config
    return schedule_from_config(config)


@pytest.mark.parametrize("kind", ["crossattn", "hybrid"])
def test_conditional_checkpoint_round_trip_and_exact_resume(kind, data, tmp_path):
    images, labels = data
    config = tiny(kind)
    straight = Trainer(config, str(tmp_path / "a"), images=images, labels=labels,
                       log=lambda _: None)
    straight.run()
    first = Trainer(config, str(tmp_path / "b"), images=images, labels=labels,
                    log=lambda _: None)
    first.run(stop_at=2)
    second = Trainer(config, str(tmp_path / "b"), images=images, labels=labels,
                     log=lambda _: None)
    second.resume(str(tmp_path / "b" / "checkpoint.npz"))
    second.run()
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(backend.to_host(v),
                                      backend.to_host(second.model.state_dict()[k]))
    loaded = load_pipeline(str(tmp_path / "a" / "ema.npz"))
    assert loaded.config["conditioning"] == kind
    assert loaded.caption_stats == straight.task.conditioner.stats
    cond, uncond = loaded.cond(2, prompts=["a thin four", "9"])
    x, t = Tensor(backend.randn(2, 1, 16, 16)), np.array([3, 30])
    with straight.ema.swapped(), no_grad():
        want = _h(straight.model.eval()(x, t, cond))
    with no_grad():
        np.testing.assert_array_equal(_h(loaded.model(x, t, cond)), want)
    if kind == "hybrid":       # without an image: everything to fill, the same for both halves
        np.testing.assert_array_equal(_h(cond["concat"][:, 0]), 1.0)
        np.testing.assert_array_equal(_h(uncond["concat"]), _h(cond["concat"]))
    plain = load_pipeline(str(_unconditioned(tmp_path, images)))   # the one loader, any kind
    assert plain.kind == "none" and plain.cond(2) == ({}, {})
    with pytest.raises(ConditionError, match="not on text"):
        plain.cond(2, prompts=["a thin four", "9"])
    # the command: --n per prompt, prompt-major, the prompts stored beside the images
    from minidiff import commands as cli
    out = str(tmp_path / "s.npz")
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "a" / "ema.npz"), "--prompt",
                     "two", "--prompt", "a thin 7", "--n", "3", "--steps", "2", "--guidance",
                     "2", "--out", out]) == 0
    saved = np.load(out, allow_pickle=False)
    assert saved["images"].shape == (6, 16, 16) and saved["images"].dtype == np.uint8
    assert list(saved["prompts"]) == ["two"] * 3 + ["a thin 7"] * 3


def _unconditioned(tmp_path, images):
    run = tmp_path / "plain"
    Trainer(tiny("none", steps=1), str(run), images=images, log=lambda _: None).run()
    return run / "ema.npz"


def test_text_grid_has_one_row_per_digit_word(data, tmp_path):
    images, labels = data
    trainer = Trainer(tiny("crossattn", steps=1, sample_every=1, sample_count=20),
                      str(tmp_path), images=images, labels=labels, log=lambda _: None)
    trainer.run()
    from PIL import Image
    grid = Image.open(next(tmp_path.glob("samples_*.png")))
    plain = Image.open(_grid_of_plain(tmp_path, images))
    assert grid.height > 2 * plain.height          # 10 rows of 2 against 4 in a square


def _grid_of_plain(tmp_path, images):
    run = tmp_path / "plain_grid"
    Trainer(tiny("none", steps=1, sample_every=1, sample_count=4), str(run), images=images,
            log=lambda _: None).run()
    return next(run.glob("samples_*.png"))


def test_a_text_model_needs_labels(data, tmp_path):
    images, _ = data
    with pytest.raises(ConditionError, match="one label per training image"):
        Trainer(tiny("crossattn"), str(tmp_path), images=images, log=lambda _: None)
