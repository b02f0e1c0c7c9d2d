"""Each training batch's ``cond`` for a conditioned config (lesson 11).

**Training.**  Each item's caption is replaced by the empty caption (all padding) with
probability ``caption_dropout``, so one network learns eps(x_t, t, y) and eps(x_t, t, {}) at
once -- what classifier-free guidance needs (``diffusion.guidance``).  A fraction
``mask_all_fraction`` of the random masks covers the whole image, so an inpainting model also
generates from nothing.  Every draw (caption template, dropout, masks) comes from minidiff's
generator, so a resumed run stays exact.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.config.vocabulary import kind_of, uses_concat, uses_text
from minidiff.data import captions, masks
from minidiff.data.mnist import to_unit_range
from minidiff.models.conditioned import ConditionError
from minidiff.pipelines.conditions import concat_input

__all__ = ["Conditioner"]


class Conditioner:
    """Makes each training batch's ``cond`` for a conditioned config (a task holds one).

    Text: each image's caption from its label and its measured thickness and slant (the
    attribute edges -- tertiles -- measured once on the training set, kept in the checkpoint
    as ``captions.*``), a template drawn per item and step, the empty caption with
    probability ``caption_dropout``.  Concat: random masks (a fraction ``mask_all_fraction``
    covering everything), the mask on the grid and E(masked image) through ``space``."""

    def __init__(self, config: dict, images, labels, space):
        self.config, self.images, self.space = config, images, space
        self.text, self.concat = uses_text(config), uses_concat(config)
        self.tokenizer = self.stats = None
        if self.text:
            if labels is None or len(labels) != len(images):
                raise ConditionError(f"conditioning {kind_of(config)}: captions need one label "
                                     f"per training image, got "
                                     f"{None if labels is None else len(labels)} for "
                                     f"{len(images)} images")
            self.labels = backend.host.asarray(labels)
            self.tokenizer = captions.Tokenizer(int(config["max_tokens"]))
            thickness = captions.measure_thickness(images)     # measured once, here
            slant = captions.measure_slant(images)
            self.stats = captions.CaptionStats(captions.tertile_edges(thickness),
                                               captions.tertile_edges(slant))
            self.thickness_words, self.slant_words = captions.attribute_words(
                thickness, slant, self.stats)

    def record(self) -> dict:
        """What the checkpoints keep: the caption statistics of the training set."""
        return self.stats.to_arrays() if self.stats is not None else {}

    def batch(self, index) -> dict:
        """``cond`` of the training images ``index`` (host indices); draws from minidiff's
        generator in a fixed order: caption templates, caption dropout, masks."""
        n, cond = len(index), {}
        if self.text:
            choice = backend.to_host(backend.randint(0, captions.N_CHOICES, (n,)))
            texts = captions.make_captions(self.labels[index], self.thickness_words[index],
                                           self.slant_words[index], choice)
            tokens = self.tokenizer.encode(texts)
            drop = backend.to_host(backend.rand(n)) < self.config["caption_dropout"]
            tokens[drop] = 0                      # the empty caption: all padding
            cond["tokens"] = backend.to_device(tokens)
        if self.concat:
            m = masks.random_masks(n, self.images.shape[-1], self.config["mask_all_fraction"],
                                   backend.rand(n, masks.MASK_DRAWS))
            cond["concat"] = concat_input(self.space, to_unit_range(self.images[index]), m)
        return cond
