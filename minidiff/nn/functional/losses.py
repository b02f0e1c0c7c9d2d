"""Losses: mean squared error and cross-entropy with fused backward passes (lesson 05).

    mse_loss(pred, target) = mean (pred - target)^2
        dL/dpred = 2 (pred - target) / m          (m elements; target gets the negative)

    cross_entropy(logits (N, K), labels (N,)) = -mean_n log softmax(logits_n)[labels_n]
        dL/dlogits = (softmax(logits) - onehot(labels)) / N

The log-softmax is computed as z - max - log sum exp(z - max), so large logits do not overflow.
"""
from minidiff import backend
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["mse_loss", "cross_entropy"]


def mse_loss(pred, target) -> Tensor:
    """mean((pred - target)^2) over all elements."""
    pred, target = as_tensors("mse_loss", pred, target)
    diff = pred.data - target.data
    m = diff.size

    def backward(g):
        grad = diff * (2.0 * g / m)
        return grad, (-grad if target.requires_grad else None)
    return Tensor._make((diff * diff).mean(), (pred, target), backward, "mse_loss")


def cross_entropy(logits, labels) -> Tensor:
    """-mean log softmax(logits)[label] for logits (N, K) and integer labels (N,)."""
    (logits,) = as_tensors("cross_entropy", logits)
    xp = backend.array_module_of(logits.data)
    labels = xp.asarray(labels.data if isinstance(labels, Tensor) else labels)
    n, _ = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"cross_entropy: labels {labels.shape} do not match logits {logits.shape}")
    rows = xp.arange(n)
    shifted = logits.data - logits.data.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[rows, labels].mean()

    def backward(g):
        grad = xp.exp(logp)
        grad[rows, labels] -= 1.0
        return (grad * (g / n),)
    return Tensor._make(loss, (logits,), backward, "cross_entropy")
