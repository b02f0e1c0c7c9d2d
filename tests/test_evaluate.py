"""minidiff eval: FID against an independent closed form, the shipped classifier, the CLI."""
import json
import os

import numpy as np
import pytest

from minidiff import backend
from minidiff.commands.eval import main as eval_main
from minidiff.evaluate.classifier import DEFAULT_PATH, MnistClassifier, accuracy, classify
from minidiff.evaluate.fid import (fid_from_features, frechet_distance, gaussian_stats,
                                   trace_sqrt_product)


def _trace_sqrtm(product):
    """Tr sqrt(S1 S2) from the general (non-symmetric) eigenvalues of S1 S2: the product is
    similar to a PSD matrix, so they are real and >= 0 and sqrt(S1 S2) has their square roots.
    An independent route: minidiff uses two symmetric eigendecompositions instead."""
    eigenvalues = np.linalg.eigvals(product).real
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _reference_frechet(mu1, s1, mu2, s2):
    """The closed form ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), computed independently."""
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2.0 * _trace_sqrtm(s1 @ s2))


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16)) * 3 + 1
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("d", [2, 10, 64])
def test_fid_matches_the_closed_form(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _reference_frechet(mu1, s1, mu2, s2), rel=1e-7, abs=1e-8)
    # and from samples: fitted statistics against the closed form on the same statistics
    x = rng.multivariate_normal(mu1, s1, size=500)
    y = rng.multivariate_normal(mu2, s2, size=400)
    m1, c1 = np.mean(x, 0), np.cov(x, rowvar=False)
    m2, c2 = np.mean(y, 0), np.cov(y, rowvar=False)
    assert fid_from_features(x, y) == pytest.approx(_reference_frechet(m1, c1, m2, c2),
                                                    rel=1e-7)


def test_trace_sqrt_product_with_singular_covariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 3))
    s1 = a @ a.T  # rank 3
    s2 = _random_cov(rng, 6)
    expected = _trace_sqrtm(s1 @ s2)
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_grows_with_a_mean_shift_and_equals_its_square_for_equal_covariances():
    rng = np.random.default_rng(2)
    d = 8
    s = _random_cov(rng, d)
    mu = rng.normal(size=d)
    previous = -1.0
    for scale in (0.0, 0.5, 1.0, 2.0):
        shift = scale * np.ones(d)
        value = frechet_distance(mu, s, mu + shift, s)
        assert value == pytest.approx(float(shift @ shift), abs=1e-8)
        assert value > previous
        previous = value
    feats = rng.normal(size=(1000, d))
    assert fid_from_features(feats, feats + 1.0) == pytest.approx(d, rel=1e-9)


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(3).normal(size=(50, 5))
    mu, cov = gaussian_stats(x)
    np.testing.assert_allclose(backend.to_host(mu), x.mean(0))
    np.testing.assert_allclose(backend.to_host(cov), np.cov(x, rowvar=False))


def test_classifier_shapes():
    backend.manual_seed(0)
    model = MnistClassifier().eval()
    feats, probs = classify(model, backend.randn(3, 1, 28, 28))
    assert feats.shape == (3, 128) and probs.shape == (3, 10)
    np.testing.assert_allclose(backend.to_host(probs).sum(1), 1.0, rtol=1e-5)


@pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="classifier not trained yet")
def test_shipped_classifier_is_small_and_accurate():
    from minidiff.data.mnist import load_mnist, to_unit_range
    from minidiff.evaluate.classifier import load_classifier
    assert os.path.getsize(DEFAULT_PATH) < 2 * 1024 * 1024
    images, labels = load_mnist("test")
    model = load_classifier()
    # the whole test set: the first 2,000 images are harder for this classifier (98.65 %)
    assert accuracy(model, to_unit_range(images), labels) >= 0.99


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from minidiff.models.unet import UNet
    from minidiff.optim.ema import EMA
    from minidiff.checkpoint import save_checkpoint
    from minidiff.config.build import model_config
    backend.manual_seed(0)
    config = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [], "num_heads": 1, "dropout": 0.0, "groups": 4,
              "time_embed_dim": 16, "T": 20, "schedule": "linear"}
    model = UNet(model_config(config))
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, model=model, ema=EMA(model), config=config, step=3, ema_only=True)
    return path


def _classifier_for_test(tmp_path):
    """The shipped classifier when present, else a random one (the CLI only needs a file)."""
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    backend.manual_seed(1)
    path = tmp_path / "random_classifier.npz"
    MnistClassifier().save(path)
    return str(path)


def test_eval_cli_json_on_a_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--n", "16", "--steps", "5", "--batch", "8",
            "--bpd-images", "4", "--classifier", _classifier_for_test(tmp_path),
            "--stats-dir", str(tmp_path / "stats"), "--reference-images", "300", "--json"]
    assert eval_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 16 and result["fid"] >= 0.0
    assert sum(result["class_histogram"]) == 16
    assert 0.0 < result["mean_confidence"] <= 1.0
    confident = result["confident_fraction"] * 16          # a count of the 16 samples
    assert confident == round(confident) and 0 <= confident <= 16
    # at most the share of samples whose confidence the mean allows above 0.9 (Markov)
    assert result["confident_fraction"] <= result["mean_confidence"] / 0.9 + 1e-9
    assert result["bits_per_dim"]["n"] == 4 and result["bits_per_dim"]["bpd"] > 0
    assert result["step"] == 3
    assert result["fid_reference"]["n"] == 300 and result["fid_floor_n"] == 16
    assert result["fid_floor_train_vs_test"] >= 0.0
    assert os.listdir(tmp_path / "stats")  # the test statistics were cached
    # second run: the cached statistics are used, the text report prints the count
    assert eval_main(argv[:-1] + ["--bpd-images", "0", "--sampler", "ddpm",
                                         "--no-floor"]) == 0
    out = capsys.readouterr().out
    assert "16 samples" in out and "bits/dim" not in out


def test_eval_cli_missing_checkpoint(tmp_path, capsys):
    code = eval_main(["--checkpoint", str(tmp_path / "nope.npz"), "--n", "16"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("minidiff: ") and len(err.strip().splitlines()) == 1


def test_eval_cli_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    assert eval_main(["--checkpoint", str(path), "--n", "16"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("minidiff: ") and len(err.strip().splitlines()) == 1
