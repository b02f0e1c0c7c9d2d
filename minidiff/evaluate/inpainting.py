"""Inpainting accuracy (issue 12, lesson 11): does the completed digit keep its label?

The first ``n`` MNIST test digits are masked (default: the bottom half), completed once each by
``minidiff.pipelines.inpaint.complete`` (concat or replacement), and the project's classifier
(``classifier.py``) labels the completions.  The figure is the fraction labelled with the
digit's true label.  Two bounds come with it, from the same digits: the masked input itself
(the hidden part blank, i.e. background; what a method that adds nothing would score) and the
originals (what a perfect completion would score).  The mask hides half a digit, and a 7 and a
9 whose bottoms are hidden can both be completed well as either: the originals' accuracy is
not reachable by any method that sees only the top.

    minidiff eval --checkpoint data/checkpoints/ldm.npz --inpainting [--n 500] [--json]
"""
from __future__ import annotations

import time

from minidiff import backend
from minidiff.data.images import save_grid
from minidiff.data.masks import masked_image, named_mask
from minidiff.data.mnist import from_unit_range, load_mnist, to_unit_range
from minidiff.evaluate.classifier import accuracy, load_classifier
from minidiff.pipelines.inpaint import complete, image_guidance_for, load_inpainter
from minidiff.pipelines.load import model_sampler

__all__ = ["inpainting_accuracy", "report", "compare_figure"]


def _accuracy(classifier, images_uint8, labels) -> float:
    return accuracy(classifier, to_unit_range(images_uint8), labels)


def inpainting_accuracy(checkpoint, n: int = 100, mask: str = "bottom", method=None,
                        sampler: str | None = None, steps=None, seed: int = 0,
                        batch: int = 250,
                        eta: float = 0.0, classifier=None, use_ema: bool = True,
                        progress=None, image_guidance=None) -> dict:
    """``{"accuracy", "masked_accuracy", "original_accuracy", "n", "method", "seconds", ...}``
    for the first ``n`` test digits under ``mask`` (a ``masks.named_mask`` spec), one
    completion each (``sampler``, ``steps``: each None is the model's own, 0 steps all T,
    ``pipelines.load.model_sampler``); ``method`` None is the
    model's default (``pipelines.inpaint.load_inpainter``, as is ``image_guidance``);
    ``classifier``: a loaded classifier (default: the shipped one)."""
    images, labels = load_mnist("test")
    images, labels = images[:n], labels[:n]
    pixel_mask = named_mask(mask, size=28)
    eps_for, schedule, space, config, method = load_inpainter(
        checkpoint, method, use_ema=use_ema, image_guidance=image_guidance)
    classifier = classifier or load_classifier()
    sampler, steps = model_sampler(config, sampler, steps)
    start = time.time()
    completions = complete(eps_for, schedule, space, images, pixel_mask, 1, sampler, steps,
                           eta=eta, seed=seed, batch=batch, method=method, progress=progress,
                           variance=config["variance"])
    seconds = time.time() - start
    blank = images * (backend.to_host(pixel_mask) < 0.5).astype(images.dtype)   # 0 = black
    return {"checkpoint": str(checkpoint), "method": method, "space": space.describe(),
            "mask": mask, "n": int(len(images)), "sampler": sampler, "steps": steps,
            "image_guidance": image_guidance_for(config, method, image_guidance=image_guidance),
            "eta": eta if sampler == "ddim" else None,
            "seed": seed, "accuracy": _accuracy(classifier, completions, labels),
            "masked_accuracy": _accuracy(classifier, blank, labels),
            "original_accuracy": _accuracy(classifier, images, labels),
            "seconds": round(seconds, 2), "backend": backend.get_backend()}


def report(r: dict) -> str:
    """The figures of ``inpainting_accuracy`` as lines of text."""
    return "\n".join([
        f"checkpoint   {r['checkpoint']}",
        f"inpainting   {r['method']}, mask {r['mask']}, {r['sampler']} {r['steps']} steps"
        + (f" eta {r['eta']}" if r.get("eta") else "")
        + (f", image guidance {r['image_guidance']:g}" if r.get("image_guidance") is not None
           else "") + ", "
        f"seed {r['seed']}, {r['seconds']} s ({r['space']})",
        f"accuracy     {r['accuracy']:.1%} of {r['n']} completed test digits get their true "
        "label from the classifier",
        f"bounds       masked input (hidden part blank) {r['masked_accuracy']:.1%}, originals "
        f"{r['original_accuracy']:.1%}"])


def compare_figure(rows, indices, path, mask: str = "bottom", n: int = 4, sampler="ddim",
                   steps: int = 50, seed: int = 0) -> None:
    """One PNG comparing methods on the same test digits: for each digit, a row per
    ``(label, checkpoint, method)`` or ``(label, checkpoint, method, options)`` in ``rows``
    (``options``: keyword arguments of ``pipelines.inpaint.complete`` for that row, e.g. ``{"eta":
    1.0}``), each the original, the masked input, then ``n`` completions; the label is
    written at the row's left."""
    host = backend.host
    test, _ = load_mnist("test")
    images = test[host.asarray(indices, dtype=host.int64)]
    pixel_mask = named_mask(mask, size=28)
    m = backend.to_device(backend.to_host(pixel_mask).astype(host.float32))[None, None]
    shown = from_unit_range(masked_image(to_unit_range(images), m))
    filled = {}
    for label, checkpoint, method, *options in rows:
        eps_for, schedule, space, config, method = load_inpainter(checkpoint, method)
        kwargs = {"sampler": sampler, "steps": steps, "seed": seed,
                  "variance": config["variance"], **(options or [{}])[0]}
        filled[label] = complete(eps_for, schedule, space, images, pixel_mask, n,
                                 method=method, **kwargs)
    tiles, names = [], []
    for i in range(len(images)):
        for label, *_ in rows:
            tiles += [images[i:i + 1], shown[i:i + 1], filled[label][i * n:(i + 1) * n]]
            names.append(f"{indices[i]}: {label}")
    save_grid(host.concatenate(tiles), path, nrow=n + 2, labels=names)
