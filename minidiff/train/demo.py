"""The engine learning something real (``minidiff demo``): a two-layer perceptron, written
with nothing but ``Tensor`` operations, learns to classify MNIST digits:
logits = relu(x W1 + b1) W2 + b2, loss = mean cross-entropy through ``log_softmax``,
parameters updated by plain gradient descent with momentum (``run``).
"""
from __future__ import annotations

import math
import os
import time

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.ops import log_softmax, relu
from minidiff.tensor import Tensor, no_grad


def _init(fan_in: int, fan_out: int) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    weights = (backend.rand(fan_in, fan_out) * 2 - 1) * bound
    return Tensor(weights, requires_grad=True)


def run(steps: int = 2000, batch: int = 128, hidden: int = 128, lr: float = 0.03,
        seed: int = 0, out: str = "runs/demo") -> dict:
    backend.manual_seed(seed)
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    x_all = to_unit_range(images.reshape(len(images), -1))
    y_all = backend.to_device(labels)
    params = [_init(784, hidden), Tensor(backend.xp().zeros(hidden, dtype=x_all.dtype),
                                         requires_grad=True),
              _init(hidden, 10), Tensor(backend.xp().zeros(10, dtype=x_all.dtype),
                                        requires_grad=True)]
    velocity = [None] * len(params)
    losses, start = [], time.time()
    for step in range(1, steps + 1):
        index = backend.to_device(backend.permutation(len(x_all))[:batch])
        w1, b1, w2, b2 = params
        logits = relu(Tensor(x_all[index]) @ w1 + b1) @ w2 + b2
        picked = log_softmax(logits)[backend.xp().arange(batch), y_all[index]]
        loss = -picked.mean()
        loss.backward()
        for i, p in enumerate(params):
            velocity[i] = p.grad if velocity[i] is None else 0.9 * velocity[i] + p.grad
            p.data -= lr * velocity[i]
            p.grad = None
        losses.append(loss.item())
        if step % 250 == 0 or step == steps:
            rate = step * batch / (time.time() - start)
            print(f"step {step:4d}/{steps}  loss {loss.item():.4f}  {rate:,.0f} images/s",
                  flush=True)
    with no_grad():
        w1, b1, w2, b2 = params
        x_test = Tensor(to_unit_range(test_images.reshape(len(test_images), -1)))
        predictions = (relu(x_test @ w1 + b1) @ w2 + b2).data.argmax(axis=1)
        accuracy = float((backend.to_host(predictions) == test_labels).mean())
    print(f"test accuracy {accuracy:.2%} after {steps} steps ({time.time() - start:.1f} s)")
    _plot(losses, out)
    return {"accuracy": accuracy, "final_loss": losses[-1]}


def _plot(losses, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot(losses)
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy")
    axis.set_title("minidiff demo: a 2-layer perceptron on MNIST")
    figure.tight_layout()
    path = os.path.join(out, "loss.png")
    with backend.atomic_file(path) as temporary:     # whole or not at all
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    print(f"loss curve saved to {path}")


