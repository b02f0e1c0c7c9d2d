"""Prompted accuracy and attribute adherence of a text-conditioned model (issue 12, lesson 11).

**Prompted accuracy.**  For each digit word ("zero" .. "nine"), ``per_prompt`` samples at the
model's guidance; the figure is the fraction the project's classifier (``classifier.py``)
labels as the prompted digit, per digit and overall, with

* the **diversity** of the samples: the mean Euclidean distance between the classifier's
  128-d features of two samples of the same digit, averaged over the ten digits -- the
  price of guidance, which buys accuracy with variety (a collapse onto one shape per digit
  scores 0);
* the **FID** of the 10 x ``per_prompt`` balanced samples against the MNIST test set
  (``fid.py``, the test statistics cached as ``minidiff eval`` caches them), with its n and
  its floor (as many training images against the test set): biased upward at small n,
  comparable only at the same n.

**Attribute adherence.**  Samples prompted "a thick D" against "a thin D", and "a slanted D"
against "an upright D" (the training captions' own wording, ``captions.make_captions``),
measured with ``captions.measure_thickness`` / ``measure_slant``.  Per attribute: each group's
mean; the fraction of (high, low) pairs of the same digit ordered right,

    AUC = P(a > b) + P(a = b) / 2,    a from the "thick" group, b from the "thin" one,

(1: every thick sample is thicker than every thin one of its digit, 0.5: no separation,
0: reversed; the Mann-Whitney statistic); and the fraction of each group that falls in its
own tertile of the training set (above the upper edge, or below the lower one: the edges the
captions were made with, stored in the checkpoint; a third of the training set each).

The scoring functions (``score_digits``, ``ordered_fraction``) take images and target labels
or measurements, apart from the sampling (``prompt_samples``), so they can be checked on real
digits.  A model trained with a mask as well (``hybrid``) is given an all-covering mask: it
generates from the caption alone (``pipelines.conditions.sampling_cond``).

    minidiff eval --checkpoint runs/txt2img/ema.npz --prompts [--per-prompt 100] [--guidance 3]
                  [--json]
"""
from __future__ import annotations

import time

from minidiff import backend
from minidiff.checkpoint import load_checkpoint
from minidiff.config.vocabulary import kind_of, uses_text
from minidiff.data import captions
from minidiff.data.captions import DIGIT_WORDS, make_captions
from minidiff.data.mnist import from_unit_range, to_unit_range
from minidiff.data.spaces import weights_sha256
from minidiff.diffusion.guidance import MAX_GUIDANCE
from minidiff.errors import MinidiffInputError, check_float, check_int
from minidiff.evaluate import inpainting
from minidiff.evaluate.classifier import classifier_path, classify, file_checksum, load_classifier
from minidiff.evaluate.fid import (floor_statistics, frechet_distance, gaussian_stats,
                                   reference_statistics)
from minidiff.evaluate.fid import DEFAULT_STATS_DIR
from minidiff.models.conditioned import ConditionError
from minidiff.pipelines.load import Pipeline, load_pipeline, model_sampler
from minidiff.pipelines.sample import sample_images

__all__ = ["prompt_samples", "prompted_accuracy", "attribute_adherence", "report",
           "prompts_report", "score_digits", "ordered_fraction", "digit_prompts",
           "attribute_prompts"]

#: (attribute, the caption word above its upper tertile edge, the word below the lower one)
ATTRIBUTES = (("thickness", "thick", "thin"), ("slant", "slanted", "upright"))


# ---------------------------------------------------------------------------------- loading
def _text_model(checkpoint, use_ema: bool = True):
    """A ``Pipeline`` of a model conditioned on text, from a path or as given; any other
    model is refused before its weights are loaded."""
    given = isinstance(checkpoint, Pipeline)
    arrays = None if given else load_checkpoint(checkpoint)
    config = checkpoint.config if given else arrays["config"]
    if not uses_text(config):
        where = "the checkpoint" if given else checkpoint
        raise ConditionError(
            f"--prompts: {where} is conditioned on {kind_of(config)!r}, not on text; prompted "
            "accuracy needs a model trained with captions (conditioning crossattn or hybrid)")
    return checkpoint if given else load_pipeline(checkpoint, use_ema=use_ema, arrays=arrays)


def _name(checkpoint):
    """The checkpoint's path for the report (None for one given loaded)."""
    return None if isinstance(checkpoint, Pipeline) else str(checkpoint)


def _guidance(loaded, guidance) -> float:
    """The guidance scale s used: ``guidance``, else the config's."""
    if guidance is None:
        return float(loaded.config["guidance"])
    return float(check_float("--guidance", guidance, low=0.0, high=MAX_GUIDANCE))


def _classifier(classifier):
    """``(model, key)``: the classifier (None: the shipped one; a path; or a loaded model) and
    the key of its cached test statistics (the file's checksum, as ``minidiff eval``)."""
    if classifier is None or isinstance(classifier, str):
        path = classifier_path(classifier)
        return load_classifier(path, name="--classifier"), file_checksum(path)
    return classifier, "w" + weights_sha256(classifier)[:16]


# ---------------------------------------------------------------------------------- prompts
def digit_prompts() -> list:
    """The ten digit words, "zero" .. "nine": the prompts of ``prompted_accuracy``."""
    return list(DIGIT_WORDS)


def attribute_prompts(attribute: str, word: str, digits) -> list:
    """One caption per digit with one attribute word, worded as the training captions are
    ("a thick seven", "an upright eight"): ``make_captions``' template "article, attribute,
    digit word" (choice 14: digit word, both attribute words kept, template 1)."""
    digits = list(digits)
    words, none = [word] * len(digits), [""] * len(digits)
    thick, slant = (words, none) if attribute == "thickness" else (none, words)
    return make_captions(digits, thick, slant, [14] * len(digits))


def _check_digits(digits) -> list:
    digits = [int(d) for d in digits]
    if not digits or min(digits) < 0 or max(digits) > 9 or len(set(digits)) != len(digits):
        raise MinidiffInputError(f"digits: expected distinct digits in 0..9, got {digits}")
    return digits


# ---------------------------------------------------------------------------------- sampling
def prompt_samples(checkpoint, prompts, per_prompt: int = 20, guidance=None,
                   sampler: str | None = None, steps=None, eta: float = 0.0, seed: int = 0,
                   batch: int = 250, use_ema: bool = True, progress=None):
    """uint8 (len(prompts) * per_prompt, 28, 28): ``per_prompt`` samples of each prompt,
    prompt-major (all of prompts[0], then prompts[1], ...), classifier-free guided with scale
    ``guidance`` (None: the config's), decoded through the model's space.  ``checkpoint`` is a
    path or a loaded ``Pipeline``; ``sampler``, ``steps``: each None is the model's own (0
    steps: all T; ``pipelines.load.model_sampler``);
    ``batch`` samples go through the sampler at once (each a doubled forward for guidance);
    ``progress(done, total)`` counts sampler steps over all batches."""
    loaded = _text_model(checkpoint, use_ema)
    check_int("--per-prompt", per_prompt, low=1)
    scale = _guidance(loaded, guidance)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise MinidiffInputError("prompts: expected at least one prompt, got none")
    loaded.tokenizer.encode(prompts)                 # unknown words refused before sampling
    texts = [text for text in prompts for _ in range(per_prompt)]
    sampler, steps = model_sampler(loaded.config, sampler, steps)

    def eps_for(begin, end):
        cond, uncond = loaded.cond(end - begin, prompts=texts[begin:end])
        return loaded.eps(cond, uncond, scale)
    images, _ = sample_images(None, loaded.schedule, loaded.space, len(texts), sampler, steps,
                              eta, seed, batch, loaded.config["variance"], progress=progress,
                              eps_for=eps_for)
    return from_unit_range(images)[:, 0]


# ---------------------------------------------------------------------------------- scoring
def _mean_pairwise_distance(features) -> float:
    """Mean ||f_i - f_j|| over the pairs i != j of ``features`` (m, D) (0 when m < 2):
    from one Gram matrix, ||f_i - f_j||^2 = |f_i|^2 + |f_j|^2 - 2 f_i . f_j."""
    xp = backend.array_module_of(features)
    m = features.shape[0]
    if m < 2:
        return 0.0
    f = features.astype(xp.float64)
    squared = (f * f).sum(axis=1)
    d2 = xp.clip(squared[:, None] + squared[None, :] - 2.0 * (f @ f.T), 0.0, None)
    d = xp.sqrt(d2) * (1.0 - xp.eye(m))             # the diagonal is 0 up to round-off
    return float(d.sum()) / (m * (m - 1))


def _scores(features, probs, labels) -> dict:
    host = backend.host
    labels = backend.to_host(backend.array_of(labels)).astype(host.int64).ravel()
    right = backend.to_host(probs.argmax(axis=1)) == labels
    per_digit, spread = [], []
    for digit in range(10):                          # ten classes, not a loop over items
        mine = labels == digit
        per_digit.append(float(right[mine].mean()) if mine.any() else None)
        if mine.sum() >= 2:
            spread.append(_mean_pairwise_distance(features[backend.to_device(mine)]))
    return {"accuracy": float(right.mean()), "per_digit": per_digit,
            "diversity": float(host.mean(spread)) if spread else None, "n": int(len(labels))}


def score_digits(images, labels, classifier=None) -> dict:
    """``{"accuracy", "per_digit", "diversity", "n"}`` of uint8 ``images`` (N, [1,] 28, 28) meant to
    show the digits ``labels`` (N,): the fraction the classifier labels as meant, overall and
    per digit (None for a digit absent), and the mean within-digit pairwise feature distance,
    averaged over the digits present (module docstring)."""
    images = backend.to_host(backend.array_of(images))
    images = images[:, None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[1] != 1 or len(images) != len(labels):
        raise MinidiffInputError(f"images: expected (N, 28, 28) or (N, 1, 28, 28) with N = "
                                 f"{len(labels)} labels, got shape {images.shape}")
    model = _classifier(classifier)[0]
    features, probs = classify(model, to_unit_range(images))
    return _scores(features, probs, labels)


def ordered_fraction(high, low) -> float:
    """The fraction of pairs (a from ``high``, b from ``low``) with a > b, ties counted half:
    P(a > b) + P(a = b) / 2, the AUC of telling the groups apart (1: every a above every b,
    0.5: indistinguishable, 0: reversed).  One broadcast comparison of all pairs."""
    host = backend.host
    a = backend.to_host(backend.array_of(high)).astype(host.float64).ravel()
    b = backend.to_host(backend.array_of(low)).astype(host.float64).ravel()
    if not len(a) or not len(b):
        raise MinidiffInputError(f"ordered_fraction: expected two non-empty groups, got "
                                 f"{len(a)} and {len(b)} values")
    above = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((above + 0.5 * ties) / (len(a) * len(b)))


def _fid(features, classifier, key: str, stats_dir: str, reference_images: int) -> dict:
    """The FID of ``features`` against the first ``reference_images`` MNIST test images', and
    the floor: as many random training images against the same (the statistics cached as
    ``minidiff eval`` caches them)."""
    mu_test, cov_test, _, n_ref = reference_statistics(classifier, key, stats_dir,
                                                       reference_images)
    mu_train, cov_train, _ = floor_statistics(classifier, key, stats_dir, len(features))
    return {"fid": frechet_distance(*gaussian_stats(features), mu_test, cov_test),
            "fid_n": int(len(features)), "fid_reference_n": n_ref,
            "fid_floor": frechet_distance(mu_train, cov_train, mu_test, cov_test)}


# ---------------------------------------------------------------------------------- figures
def _common(loaded, scale, sampler, steps, eta, seed) -> dict:
    """The settings a report states: ``sampler`` and ``steps`` as ``model_sampler`` resolved
    them."""
    return {"guidance": scale, "sampler": sampler, "steps": steps,
            "eta": eta if sampler == "ddim" else None, "seed": seed,
            "space": loaded.space.describe(), "backend": backend.get_backend()}


def prompted_accuracy(checkpoint, per_prompt: int = 20, guidance=None, sampler: str | None = None,
                      steps=None, eta: float = 0.0, seed: int = 0, batch: int = 250,
                      use_ema: bool = True, classifier=None, fid: bool = True,
                      stats_dir: str | None = None, reference_images: int = 10_000,
                      progress=None) -> dict:
    """``{"accuracy", "per_digit", "n", "per_prompt", "guidance", "diversity", "fid", "fid_n",
    "fid_floor", "seconds", ...}``: ``per_prompt`` samples per digit word, scored by
    ``score_digits``' rule; the FID of all of them against the first ``reference_images``
    test images, and its floor (as many random training images against the same; the FID
    figures None with ``fid=False``; the statistics cached under ``stats_dir``, default
    ``minidiff eval``'s).  ``classifier``: a path or a loaded classifier (default the
    shipped one); "seconds" is the sampling time."""
    loaded = _text_model(checkpoint, use_ema)
    scale = _guidance(loaded, guidance)
    sampler, steps = model_sampler(loaded.config, sampler, steps)
    model, key = _classifier(classifier)
    start = time.time()
    images = prompt_samples(loaded, digit_prompts(), per_prompt, scale, sampler, steps, eta,
                            seed, batch, progress=progress)
    seconds = time.time() - start
    labels = backend.host.repeat(backend.host.arange(10), per_prompt)
    features, probs = classify(model, to_unit_range(images[:, None]))
    result = {"checkpoint": _name(checkpoint),
              **_scores(features, probs, labels), "per_prompt": per_prompt,
              **_common(loaded, scale, sampler, steps, eta, seed),
              "fid": None, "fid_n": None, "fid_reference_n": None, "fid_floor": None}
    if fid and len(images) >= 2:
        result.update(_fid(features, model, key, stats_dir or DEFAULT_STATS_DIR,
                           reference_images))
    result["seconds"] = round(seconds, 2)
    return result


def _caption_stats(loaded, checkpoint):
    """The training set's caption statistics (the tertile edges the attribute figures
    compare with), or one line saying the checkpoint lacks them."""
    if loaded.caption_stats is None:
        where = loaded.path or _name(checkpoint)
        raise MinidiffInputError(
            f"--checkpoint: {where} is a text model without caption statistics "
            "(captions.thickness_edges, captions.slant_edges), which the attribute figures "
            "compare with", "it samples from prompts as it is; retrain it (minidiff train) "
            "for the figures")
    return loaded.caption_stats


def attribute_adherence(checkpoint, digits=range(10), per_prompt: int = 20, guidance=None,
                        sampler: str | None = None, steps=None, eta: float = 0.0, seed: int = 0,
                        batch: int = 250, use_ema: bool = True, progress=None) -> dict:
    """``{"thickness": {...}, "slant": {...}, "digits", "per_prompt", "guidance", "seconds",
    ...}``: for each attribute, ``per_prompt`` samples per digit of "a <high> D" and of
    "a <low> D" (thick/thin, slanted/upright), measured; per attribute "mean_high",
    "mean_low", "auc" (the fraction of same-digit (high, low) pairs ordered right,
    ``ordered_fraction``), "auc_pooled" (all pairs, across digits), "in_tertile_high" /
    "in_tertile_low" (the fraction above the training set's upper edge / below its lower
    edge), "edges", "n" (samples per group).  One sampling run for all four groups."""
    loaded = _text_model(checkpoint, use_ema)
    stats = _caption_stats(loaded, checkpoint)
    scale = _guidance(loaded, guidance)
    sampler, steps = model_sampler(loaded.config, sampler, steps)
    digits = _check_digits(digits)
    check_int("--per-prompt", per_prompt, low=1)
    prompts = [text for attribute, high, low in ATTRIBUTES for word in (high, low)
               for text in attribute_prompts(attribute, word, digits)]
    start = time.time()
    images = prompt_samples(loaded, prompts, per_prompt, scale, sampler, steps, eta, seed,
                            batch, progress=progress)
    seconds = time.time() - start
    group = len(digits) * per_prompt
    measure = {"thickness": captions.measure_thickness, "slant": captions.measure_slant}
    edges = {"thickness": stats.thickness_edges, "slant": stats.slant_edges}
    result = {"checkpoint": _name(checkpoint),
              "digits": digits, "per_prompt": per_prompt,
              **_common(loaded, scale, sampler, steps, eta, seed)}
    for k, (attribute, high, low) in enumerate(ATTRIBUTES):
        values = measure[attribute](images[2 * k * group:(2 * k + 2) * group])
        a, b = values[:group], values[group:]
        per_digit_auc = [ordered_fraction(a[i:i + per_prompt], b[i:i + per_prompt])
                         for i in range(0, group, per_prompt)]        # one per digit
        lower, upper = edges[attribute]
        result[attribute] = {
            "high": high, "low": low, "example": [attribute_prompts(attribute, w, digits[:1])[0]
                                                  for w in (high, low)],
            "mean_high": float(a.mean()), "mean_low": float(b.mean()),
            "auc": float(backend.host.mean(per_digit_auc)),
            "auc_pooled": ordered_fraction(a, b),
            "in_tertile_high": float((a > upper).mean()),
            "in_tertile_low": float((b < lower).mean()),
            "edges": [float(lower), float(upper)], "n": group}
    result["seconds"] = round(seconds, 2)
    return result


def prompts_report(checkpoint, per_prompt: int = 20, guidance=None, sampler: str | None = None,
                   steps=None, eta: float = 0.0, seed: int = 0, batch: int = 250,
                   use_ema: bool = True, classifier=None, fid: bool = True,
                   stats_dir: str | None = None, reference_images: int = 10_000,
                   digits=range(10), progress=None) -> dict:
    """``{"checkpoint", "prompted": prompted_accuracy(...), "attributes":
    attribute_adherence(...)}``: what ``minidiff eval --prompts`` prints (``report``); the
    model is loaded once.  ``progress``: None, or ``progress(label)`` -> a ``progress(done,
    total)`` hook for each of the two sampling runs (e.g. ``minidiff.progress.Progress``)."""
    loaded = _text_model(checkpoint, use_ema)
    _caption_stats(loaded, checkpoint)          # before the first of the two runs
    options = {"per_prompt": per_prompt, "guidance": guidance, "sampler": sampler,
               "steps": steps, "eta": eta, "seed": seed, "batch": batch}
    def hook(label):                     # made when its run starts (its clock starts then)
        return None if progress is None else progress(label)
    prompted = prompted_accuracy(loaded, classifier=classifier, fid=fid, stats_dir=stats_dir,
                                 reference_images=reference_images,
                                 progress=hook("prompted digits"), **options)
    attributes = attribute_adherence(loaded, digits, progress=hook("attribute prompts"),
                                     **options)
    name = _name(checkpoint)
    prompted["checkpoint"] = attributes["checkpoint"] = name
    return {"checkpoint": name, "prompted": prompted, "attributes": attributes}


def _prompted_lines(r: dict) -> list:
    lines = [f"prompted     {r['accuracy']:.1%} of {r['n']} samples get the prompted digit from "
             f"the classifier ({r['per_prompt']} per digit word)",
             f"sampler      {r['sampler']} {r['steps']} steps"
             + (f" eta {r['eta']}" if r.get("eta") else "")
             + f", seed {r['seed']}, guidance {r['guidance']:g}, {r['seconds']} s",
             "per digit    " + "  ".join(f"{d}:{'-' if v is None else format(v, '.0%')}"
                                        for d, v in enumerate(r["per_digit"]))]
    if r.get("diversity") is not None:
        lines.append(f"diversity    {r['diversity']:.3f} (mean pairwise classifier-feature "
                     "distance within a digit)")
    if r.get("fid") is not None:
        lines += [f"FID          {r['fid']:.3f}  ({r['fid_n']} balanced samples vs "
                  f"{r['fid_reference_n']} MNIST test images; biased upward at small n)",
                  f"FID floor    {r['fid_floor']:.3f}  ({r['fid_n']} training images vs the "
                  "same: what the data itself scores at this n)"]
    return lines


def _attribute_lines(r: dict) -> list:
    digits = "".join(map(str, r["digits"]))
    lines = [f"attributes   {r['per_prompt']} samples per digit ({digits}) and word, e.g. "
             f"\"{r['thickness']['example'][0]}\", guidance {r['guidance']:g}, "
             f"{r['seconds']} s"]
    for attribute, high, low in ATTRIBUTES:
        a = r[attribute]
        lines += [f"{attribute:<12} {high} {a['mean_high']:.3f} vs {low} {a['mean_low']:.3f} "
                  f"(means, n = {a['n']} each): AUC {a['auc']:.3f} within a digit, "
                  f"{a['auc_pooled']:.3f} pooled",
                  f"             in their own tertile: {high} {a['in_tertile_high']:.0%}, {low} "
                  f"{a['in_tertile_low']:.0%} (a third of the training set each)"]
    return lines


def report(r: dict) -> str:
    """The figures of ``prompted_accuracy``, ``attribute_adherence`` or ``prompts_report``
    (with an optional "inpainting" entry, ``inpainting.inpainting_accuracy``) as text."""
    lines = [f"checkpoint   {r['checkpoint']}"] if r.get("checkpoint") else []
    if "prompted" in r:
        lines += _prompted_lines(r["prompted"]) + _attribute_lines(r["attributes"])
        lines.append(f"space        {r['prompted']['space']}")
    elif "accuracy" in r:
        lines += _prompted_lines(r)
    else:
        lines += _attribute_lines(r)
    if r.get("inpainting"):
        lines += inpainting.report(r["inpainting"]).splitlines()[1:]
    return "\n".join(lines)
