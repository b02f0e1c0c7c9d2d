"""``minidiff eval --prompts`` (evaluate/prompts.py): the scoring on real digits of known labels
and on groups of known order, the prompt-major order of the samples through the real sampler
(a stand-in whose x_0 is a test digit chosen by the prompt), the figures' ranges on tiny
trained text models, and the command's refusals."""
import json

import numpy as np
import pytest

from minidiff import backend, commands as cli
from minidiff.data import captions
from minidiff.models.conditioned import ConditionError
from minidiff.pipelines.load import Pipeline
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.evaluate import prompts
from minidiff.data.spaces import PixelSpace
from minidiff.tensor import Tensor
from minidiff.config.build import schedule_from_config
from minidiff.errors import MinidiffInputError
from tests.test_conditioning import tiny
from tests.test_inpaint_concat import models  # noqa: F401  (the tiny concat / hybrid models)


@pytest.fixture(scope="module")
def test_digits():
    """The first 300 MNIST test digits with their labels (the classifier gets ~all right)."""
    images, labels = load_mnist("test")
    return images[:300, 0], labels[:300]


# ------------------------------------------------------------------------------- scoring
def test_real_digits_of_known_labels_score_about_one(test_digits):
    images, labels = test_digits
    r = prompts.score_digits(images, labels)
    assert r["accuracy"] >= 0.97 and r["n"] == 300
    assert len(r["per_digit"]) == 10 and all(0.9 <= v <= 1.0 for v in r["per_digit"])
    assert r["diversity"] > 0
    wrong = prompts.score_digits(images, (labels + 1) % 10)      # every label shifted
    assert wrong["accuracy"] <= 0.03
    same = prompts.score_digits(np.repeat(images[:1], 5, axis=0), np.repeat(labels[:1], 5))
    assert same["diversity"] == pytest.approx(0.0, abs=1e-3)      # five copies: no variety
    assert same["per_digit"].count(None) == 9


def test_diversity_is_the_mean_pairwise_feature_distance(test_digits):
    """Against a brute-force double loop over the pairs of each digit's features."""
    from minidiff.evaluate.classifier import classify, load_classifier
    images, labels = test_digits[0][:40], test_digits[1][:40]
    features, _ = classify(load_classifier(), to_unit_range(images[:, None]))
    features = backend.to_host(features).astype(np.float64)
    means = []
    for digit in range(10):
        f = features[labels == digit]
        pairs = [np.linalg.norm(f[i] - f[j]) for i in range(len(f)) for j in range(len(f))
                 if i != j]
        if pairs:
            means.append(np.mean(pairs))
    assert prompts.score_digits(images, labels)["diversity"] == pytest.approx(np.mean(means),
                                                                             rel=1e-4)


def test_ordered_fraction_of_groups_of_known_order():
    assert prompts.ordered_fraction([5, 6, 7], [1, 2, 3]) == 1.0
    assert prompts.ordered_fraction([1, 2, 3], [5, 6, 7]) == 0.0
    assert prompts.ordered_fraction([2, 2], [2, 2, 2]) == 0.5              # ties count half
    assert prompts.ordered_fraction([1, 3], [2, 0, 2]) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    same = prompts.ordered_fraction(rng.normal(size=400), rng.normal(size=400))
    assert abs(same - 0.5) < 0.05                                # one distribution: ~0.5
    with pytest.raises(MinidiffInputError, match="non-empty"):
        prompts.ordered_fraction([], [1.0])


def test_attribute_prompts_are_the_training_captions_wording():
    assert prompts.attribute_prompts("thickness", "thick", [7, 8]) == ["a thick seven",
                                                                       "a thick eight"]
    assert prompts.attribute_prompts("slant", "upright", [8]) == ["an upright eight"]
    assert prompts.attribute_prompts("slant", "slanted", [0]) == ["a slanted zero"]
    every = [p for attribute, high, low in prompts.ATTRIBUTES for word in (high, low)
             for p in prompts.attribute_prompts(attribute, word, range(10))]
    captions.Tokenizer(8).encode(every)            # every word is in the vocabulary


# ------------------------------------------------------------------------------- stand-in
def _stand_in(test_digits):
    """A ``Pipeline`` whose network predicts x_0 = a test digit of the prompted
    digit word (made thicker by a 3x3 max filter for "thick"), whatever x_t: sampled through
    the real sampler, guidance 1, each prompt's samples are that digit."""
    images, labels = test_digits
    config = tiny("crossattn", image_size=28, attention_resolutions=[14], prediction="x0",
                  guidance=1.0)
    digits = images[[int(np.flatnonzero(labels == d)[0]) for d in range(10)]]
    padded = np.pad(digits, ((0, 0), (1, 1), (1, 1)))
    thick = np.max([padded[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)], axis=0)
    table = backend.to_device(to_unit_range(np.concatenate([digits, thick])[:, None]))
    first_digit, thick_id = captions.VOCABULARY.index("zero"), captions.VOCABULARY.index("thick")

    def model(x_t, t, cond=None):
        tokens = backend.array_of(cond["tokens"])
        digit = (((tokens >= first_digit) & (tokens < first_digit + 10))
                 * (tokens - first_digit + 1)).max(axis=1) - 1            # -1: no digit word
        row = digit + 10 * (tokens == thick_id).any(axis=1)
        return Tensor(backend.xp().where((digit >= 0)[:, None, None, None],
                                         table[backend.xp().maximum(row, 0)], -1.0)
                      .astype(x_t.data.dtype))

    stats = captions.CaptionStats.from_images(images)
    return digits, Pipeline(
        model, schedule_from_config(config), config, PixelSpace(28), captions.Tokenizer(8),
        stats)


def test_samples_are_prompt_major_through_the_sampler(test_digits):
    digits, loaded = _stand_in(test_digits)
    order = [7, 2, 7, 0]
    images = prompts.prompt_samples(loaded, [captions.DIGIT_WORDS[d] for d in order],
                                    per_prompt=3, steps=3, batch=5)  # batches cut prompts
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    for k, d in enumerate(order):
        for i in range(3):
            assert np.abs(images[3 * k + i].astype(int) - digits[d]).max() <= 1


def test_prompted_accuracy_of_the_stand_in_is_its_digits_accuracy(test_digits):
    _, loaded = _stand_in(test_digits)
    r = prompts.prompted_accuracy(loaded, per_prompt=2, steps=2, fid=False)
    assert len(r["per_digit"]) == 10 and all(v in (0.0, 1.0) for v in r["per_digit"])
    assert r["accuracy"] == pytest.approx(np.mean(r["per_digit"]))
    assert r["accuracy"] >= 0.9                  # the first test digit of each class
    assert r["n"] == 20 and r["per_prompt"] == 2 and r["guidance"] == 1.0
    assert r["diversity"] == pytest.approx(0.0, abs=1e-3)   # one image per prompt
    assert r["fid"] is None and r["fid_n"] is None
    assert "per digit" in prompts.report(r)


def test_thick_prompts_of_the_stand_in_measure_thicker(test_digits):
    _, loaded = _stand_in(test_digits)
    r = prompts.attribute_adherence(loaded, digits=[1, 4, 7], per_prompt=2, steps=2)
    thickness = r["thickness"]
    assert thickness["mean_high"] > thickness["mean_low"]
    assert thickness["auc"] == 1.0 and thickness["n"] == 6
    assert thickness["example"] == ["a thick one", "a thin one"]
    for key in ("auc", "auc_pooled", "in_tertile_high", "in_tertile_low"):
        assert 0.0 <= r["slant"][key] <= 1.0
    assert "AUC" in prompts.report(r)


# ------------------------------------------------------------------------------- trained
def test_figures_of_a_tiny_trained_hybrid_model_are_in_range(models, tmp_path):  # noqa: F811
    r = prompts.prompts_report(models["hybrid"], per_prompt=2, steps=2, guidance=2.0,
                               stats_dir=str(tmp_path), reference_images=50)
    p, a = r["prompted"], r["attributes"]
    assert len(p["per_digit"]) == 10 and all(0.0 <= v <= 1.0 for v in p["per_digit"])
    assert p["accuracy"] == pytest.approx(np.mean(p["per_digit"]))
    assert p["fid"] >= 0 and p["fid_n"] == 20 and p["fid_reference_n"] == 50
    assert 0 <= p["fid_floor"] < p["fid"]          # two training steps are far from the data
    assert p["guidance"] == a["guidance"] == 2.0 and p["diversity"] >= 0
    for attribute in ("thickness", "slant"):
        assert 0.0 <= a[attribute]["auc"] <= 1.0 and a[attribute]["n"] == 20
    assert r["checkpoint"] == models["hybrid"]
    text = prompts.report(r)
    assert "prompted" in text and "thickness" in text and "FID" in text


def test_the_command_prints_json_and_text(models, tmp_path, capsys):  # noqa: F811
    argv = ["eval", "--checkpoint", models["hybrid"], "--prompts", "--per-prompt", "1",
            "--steps", "2", "--reference-images", "20", "--stats-dir", str(tmp_path)]
    assert cli.main(argv + ["--guidance", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompted"]["n"] == 10 and r["prompted"]["guidance"] == 0.0
    assert r["attributes"]["per_prompt"] == 1 and "inpainting" not in r
    assert cli.main(argv + ["--inpainting", "--n", "2"]) == 0      # a hybrid model: + inpainting
    text = capsys.readouterr().out
    assert "prompted" in text and "slant" in text and "of 2 completed test digits" in text


@pytest.mark.parametrize("extra, words", [
    (["--per-prompt", "0"], ["--per-prompt", "0"]),
    (["--guidance", "-1"], ["--guidance", "-1"]),
    (["--guidance", "nan"], ["--guidance"]),
])
def test_the_command_refuses_bad_numbers(models, extra, words, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        cli.main(["eval", "--checkpoint", models["hybrid"], "--prompts", *extra])
    err = capsys.readouterr().err
    assert all(w in err for w in words)


def test_the_command_refuses_a_model_without_text(models, capsys):  # noqa: F811
    assert cli.main(["eval", "--checkpoint", models["concat"], "--prompts"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--prompts" in err and "'concat'" in err and len(err.splitlines()) == 1
    with pytest.raises(ConditionError, match="--prompts"):
        prompts.prompted_accuracy(models["concat"], per_prompt=1, steps=1, fid=False)


def test_the_command_refuses_prompt_options_without_prompts(models, capsys):  # noqa: F811
    assert cli.main(["eval", "--checkpoint", models["hybrid"], "--guidance", "2"]) != 0
    assert "--guidance" in capsys.readouterr().err


def test_the_functions_refuse_bad_input(test_digits):
    _, loaded = _stand_in(test_digits)
    with pytest.raises(MinidiffInputError, match="--guidance"):
        prompts.prompt_samples(loaded, ["two"], per_prompt=1, guidance=-0.5)
    with pytest.raises(MinidiffInputError, match="--per-prompt"):
        prompts.prompt_samples(loaded, ["two"], per_prompt=0)
    with pytest.raises(captions.CaptionError, match="unknown word"):
        prompts.prompt_samples(loaded, ["a fat two"], per_prompt=1)
    with pytest.raises(MinidiffInputError, match="digits"):
        prompts.attribute_adherence(loaded, digits=[3, 11])
