"""Train the MNIST classifier behind minidiff's FID (``minidiff eval train-classifier``):
Adam (lr 1e-3, cosine decay to 0), batch 128, cross-entropy, a few epochs on the 60,000
training images (``train``).
"""
from __future__ import annotations

import math
import time

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.evaluate.classifier import DEFAULT_PATH, MnistClassifier, accuracy
from minidiff.nn.functional import cross_entropy
from minidiff.optim import Adam
from minidiff.tensor import Tensor


def train(epochs: int = 4, batch: int = 128, lr: float = 1e-3, seed: int = 0,
          out: str = DEFAULT_PATH, log_every: int = 100, init: str | None = None) -> dict:
    backend.manual_seed(seed)
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    x_all, y_all = to_unit_range(images), backend.to_device(labels)
    model = MnistClassifier()
    if init:
        model.load(init)  # continue from a saved classifier (fine-tuning)
    optimizer = Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(x_all) // batch
    total = epochs * steps_per_epoch
    step, start = 0, time.time()
    for epoch in range(epochs):
        order = backend.to_device(backend.permutation(len(x_all)))
        model.train()
        for i in range(steps_per_epoch):
            index = order[i * batch:(i + 1) * batch]
            optimizer.lr = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
            loss = cross_entropy(model(Tensor(x_all[index])), y_all[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % log_every == 0 or step == total:
                print(f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss.item():.4f} "
                      f"lr {optimizer.lr:.2e} {time.time() - start:.0f} s", flush=True)
        model.eval()
        acc = accuracy(model, to_unit_range(test_images), test_labels)
        print(f"epoch {epoch + 1}: test accuracy {acc:.2%} ({time.time() - start:.0f} s)",
              flush=True)
    seconds = time.time() - start
    model.save(out)
    print(f"saved {out}: test accuracy {acc:.2%}, {seconds:.0f} s of training", flush=True)
    return {"accuracy": acc, "seconds": seconds, "path": out}
