# %% [markdown]
# # Lesson 00 — Automatic differentiation
#
# Training a diffusion model means following the gradient of a loss with respect to a few
# million parameters.  Nobody writes those derivatives by hand: the library records how the
# loss was computed and then applies the chain rule backwards through that record.  This
# lesson builds the intuition for `minidiff.tensor`, which does exactly that in under 300
# lines, and for `minidiff.gradcheck.gradcheck`, which checks every operation against finite
# differences.
#
# Sections:
#
# 1. The chain rule, eq. (0.1) and (0.2)
# 2. The graph, and the topological order that backward walks
# 3. Broadcasting shows up in gradients as a sum, eq. (0.3)
# 4. Checking gradients with central differences, eq. (0.4) and (0.5), and a figure
#
# Every claim is printed and then checked with `assert` as the script runs.
#
# ```
# python lessons/00_autograd.py            # the full lesson
# python lessons/00_autograd.py --quick    # a fast pass (used by the tests)
# python lessons/00_autograd.py --out DIR  # where the figure goes (default runs/lessons)
# ```

# %%
import math

from _lesson import lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.gradcheck import gradcheck, numerical_gradient

np = backend.host  # NumPy, for plain host-side numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 00: automatic differentiation", "a fast pass (fewer points)"), dtype="float64")  # float64 throughout: we compare against finite differences


# %% [markdown]
# ## 1. The chain rule
#
# If $y = f(x)$ and $L = g(y)$, then
#
# $$
# \frac{dL}{dx} = \frac{dL}{dy}\, \frac{dy}{dx} .
# \tag{0.1}
# $$
#
# Reverse mode reads (0.1) from the left: it starts with $dL/dL = 1$ at the loss and multiplies
# by one *local* derivative per operation as it walks back towards the inputs.  Each operation
# only needs to know its own derivative.
#
# For vectors, $y = f(x)$ with $x \in \mathbb{R}^n$ and $y \in \mathbb{R}^m$, $dy/dx$ is the
# $m \times n$ Jacobian $J$ and (0.1) becomes a vector–Jacobian product: every path from $x_i$ to
# $L$ contributes, and the paths add,
#
# $$
# \frac{\partial L}{\partial x_i} = \sum_j \frac{\partial L}{\partial y_j}\, \frac{\partial y_j}{\partial x_i},
# \qquad \text{i.e.} \qquad
# \frac{\partial L}{\partial x} = J^\top \frac{\partial L}{\partial y} .
# \tag{0.2}
# $$
#
# Backward never forms $J$: each operation computes $J^\top g$ directly from the gradient $g$
# that arrives at its output.  Let us check (0.1) on $L = \tanh(x^2)$, whose derivative we know
# by hand: $dL/dx = (1 - \tanh^2(x^2))\, 2x$.

# %%
x = md.tensor([0.3, -1.2, 2.0], requires_grad=True)
y = x * x                  # y = f(x) = x^2,     dy/dx = 2x
L = md.tanh(y).sum()       # L = g(y) = tanh(y), dL/dy = 1 - tanh(y)^2
L.backward()

x_host = x.numpy()
by_hand = (1 - np.tanh(x_host ** 2) ** 2) * 2 * x_host
show("x", x_host)
show("backward: dL/dx", backend.to_host(x.grad))
show("by hand (0.1): g'(f(x)) f'(x)", by_hand)
assert np.allclose(backend.to_host(x.grad), by_hand, rtol=1e-12, atol=0), "(0.1)"

# %% [markdown]
# Now (0.2) with a real Jacobian: $y = W x$ (so $J = W$) followed by $L = \sum_j c_j y_j^2$.
# Then $\partial L / \partial y = 2 c \odot y$ and, by (0.2),
# $\partial L / \partial x = W^\top (2 c \odot y)$.  A variable used twice (here: `x` in both
# `x * x` and `+ x`) is the simplest case of "paths add": $d(x^2 + x)/dx = 2x + 1$.

# %%
W = md.tensor(backend.randn(4, 3))
c = md.tensor([1.0, -2.0, 0.5, 3.0])
x = md.tensor([0.5, -1.0, 2.0], requires_grad=True)
y = W @ x
L = (c * y * y).sum()
L.backward()
vjp = W.numpy().T @ (2 * c.numpy() * y.numpy())
show("backward: dL/dx", backend.to_host(x.grad))
show("(0.2): W^T dL/dy", vjp)
assert np.allclose(backend.to_host(x.grad), vjp, rtol=1e-12), "(0.2)"

x = md.tensor([1.5, -2.0], requires_grad=True)
(x * x + x).sum().backward()
show("d(x^2 + x)/dx, two paths", backend.to_host(x.grad))
assert np.allclose(backend.to_host(x.grad), 2 * np.array([1.5, -2.0]) + 1), "(0.2): paths add"

# %% [markdown]
# ## 2. The graph and its topological order
#
# Every operation on a tensor returns a new tensor that remembers its inputs (`_parents`),
# the name of the operation (`_op`) and a `backward` closure that maps the output's gradient
# to its inputs' gradients.  Together they form a directed acyclic graph from the leaves
# (inputs and parameters, `requires_grad=True`) to the loss.
#
# Backward must not pass a node's gradient on before it is complete — before *every* path
# through that node has added its share, (0.2).  So it visits the nodes in **reverse
# topological order**: a topological order lists each node after all of its parents, and
# reversing it visits each node after everything that uses it.  `Tensor._topological_order`
# finds that order with a depth-first search on an explicit stack (not recursion, so a chain
# of 10,000 operations is fine).
#
# Here is the graph of a small expression, a one-neuron "network" with a squared error:
#
# $$
# L = \big(\tanh(w x + b) - t\big)^2 .
# $$

# %%
w = md.tensor(0.8, requires_grad=True)
b = md.tensor(-0.1, requires_grad=True)
x = md.tensor(1.5)               # data: no gradient wanted
t = md.tensor(0.25)              # target
h = w * x + b
L = (md.tanh(h) - t) ** 2

names = {id(w): "w", id(b): "b", id(L): "L"}
order = L._topological_order()
print("topological order (each node after its parents):")
for i, node in enumerate(order):
    name = names.setdefault(id(node), f"v{i}")
    parents = ", ".join(names.get(id(p), "const") if p.requires_grad else "const"
                        for p in node._parents)
    what = f"{node._op}({parents})" if node._op else "leaf"
    print(f"  {i}: {name:>2s} = {what}")

ops_in_order = [node._op for node in order if node._op]
assert ops_in_order == ["mul", "add", "tanh", "sub", "power"], ops_in_order
position = {id(node): i for i, node in enumerate(order)}
assert order[-1] is L
assert all(position[id(p)] < position[id(node)]
           for node in order for p in node._parents if p.requires_grad)

L.backward()
tanh_h = math.tanh(0.8 * 1.5 - 0.1)
dL_dh = 2 * (tanh_h - 0.25) * (1 - tanh_h ** 2)  # the chain rule, one factor per node
show("dL/dw, backward", w.grad)
show("dL/dw, by hand = dL/dh * x", dL_dh * 1.5)
show("dL/db, by hand = dL/dh * 1", dL_dh)
assert math.isclose(float(w.grad), dL_dh * 1.5, rel_tol=1e-12)
assert math.isclose(float(b.grad), dL_dh, rel_tol=1e-12)

# %% [markdown]
# After `backward()` the closures and the links to the parents are dropped (unless
# `retain_graph=True`), so the forward buffers they held can be freed: the graph is rebuilt by
# the next forward pass.

# %%
show("L._parents after backward", L._parents)
assert L._parents == ()

# %% [markdown]
# ## 3. Broadcasting shows up in gradients as a sum
#
# `x + b` with `x` of shape (4, 3) and `b` of shape (3,) uses every $b_j$ four times, once per
# row.  By (0.2) the four uses are four paths, and their gradients add:
#
# $$
# \frac{\partial L}{\partial b_j} = \sum_i \frac{\partial L}{\partial (x + b)_{ij}}
# \tag{0.3}
# $$
#
# (summed over every axis that broadcasting added or stretched from size 1).
# The engine does this for every operation (`minidiff.tensor.unbroadcast`), so an operation's
# backward may return its gradient in the broadcast shape.

# %%
x = md.tensor(backend.randn(4, 3))
b = md.tensor([0.1, 0.2, 0.3], requires_grad=True)
upstream = backend.randn(4, 3)
(x + b).backward(upstream)
show("upstream gradient shape", tuple(upstream.shape))
show("b.grad shape", b.grad.shape)
show("b.grad", backend.to_host(b.grad))
show("(0.3): upstream summed over axis 0", backend.to_host(upstream).sum(axis=0))
assert b.grad.shape == (3,)
assert np.allclose(backend.to_host(b.grad), backend.to_host(upstream).sum(axis=0), rtol=1e-12), \
    "(0.3)"

# a size-1 axis that is stretched is summed too, and kept: (4, 1) gets a (4, 1) gradient
s = md.tensor([[1.0], [2.0], [3.0], [4.0]], requires_grad=True)
(s * x).backward(upstream)
expected = (backend.to_host(upstream) * x.numpy()).sum(axis=1, keepdims=True)
show("scale.grad (kept as (4, 1))", backend.to_host(s.grad).ravel())
assert s.grad.shape == (4, 1) and np.allclose(backend.to_host(s.grad), expected, rtol=1e-12)

# %% [markdown]
# ## 4. Gradient checking
#
# How do we know that every operation's backward is right?  We compare it with the definition
# of the derivative.  For a scalar $L(x)$ and a small step $h$ along the $i$-th coordinate
# $e_i$, the **central difference**
#
# $$
# \frac{L(x + h e_i) - L(x - h e_i)}{2h} = \frac{\partial L}{\partial x_i} + O(h^2)
# \tag{0.4}
# $$
#
# is accurate to second order: the Taylor terms of even order cancel, leaving
# $\frac{h^2}{6} L'''(x)$.  (The one-sided difference $(L(x + h e_i) - L(x))/h$ is only
# $O(h)$.)  We cannot make $h$ arbitrarily small, though: $L$ itself is computed with a
# relative rounding error of about $\varepsilon = 2.2 \cdot 10^{-16}$ (float64), and dividing by
# $2h$ magnifies it, so
#
# $$
# \mathrm{error}(h) \approx \frac{|L'''|\, h^2}{6} + \frac{\varepsilon\, |L|}{h}
# \tag{0.5}
# $$
#
# which is smallest near $h \approx \varepsilon^{1/3}$, about $10^{-5}$ to $10^{-6}$.
# `minidiff.gradcheck.gradcheck` uses $h = 10^{-6}$ in float64, perturbing one element at a
# time.  Let us measure (0.5) on $L(x) = \sum \tanh(x)\, e^{x/2}$ at one point, where we know
# $dL/dx$ exactly.

# %%
point = 0.7
exact = (1 - math.tanh(point) ** 2) * math.exp(point / 2) + math.tanh(point) * 0.5 * math.exp(
    point / 2)


def loss_at(value):
    v = md.tensor([value])
    return (md.tanh(v) * md.exp(v / 2)).sum().item()


v = md.tensor([point], requires_grad=True)
(md.tanh(v) * md.exp(v / 2)).sum().backward()
show("backward", float(v.grad[0]))
show("exact", exact)
assert math.isclose(float(v.grad[0]), exact, rel_tol=1e-14)

h = 1e-6
central_at_h = (loss_at(point + h) - loss_at(point - h)) / (2 * h)
show("(0.4) central difference, h=1e-6", central_at_h)
assert abs(central_at_h - exact) < 1e-8

steps = np.logspace(-1, -13, 25 if args.quick else 61)
central = np.array([abs((loss_at(point + h) - loss_at(point - h)) / (2 * h) - exact)
                    for h in steps])
forward = np.array([abs((loss_at(point + h) - loss_at(point)) / h - exact) for h in steps])
best = steps[np.argmin(central)]
show("(0.5) best h, central differences", f"{best:.1e}  (error {central.min():.1e})")
show("best h for forward differences", f"{steps[np.argmin(forward)]:.1e}  "
                                       f"(error {forward.min():.1e})")
assert 1e-7 <= best <= 1e-3, best            # the bottom of the V, as (0.5) predicts
assert central.min() < 1e-10 and 10 * central.min() < forward.min()  # 2nd order beats 1st

# the slope of log(error) against log(h) on the truncation side of the V: 2 for (0.4), 1 for
# the one-sided difference
large = (steps >= 1e-4) & (steps <= 1e-2)  # where truncation dominates, h small
slope_central = np.polyfit(np.log10(steps[large]), np.log10(central[large]), 1)[0]
slope_forward = np.polyfit(np.log10(steps[large]), np.log10(forward[large]), 1)[0]
show("slope, central (expect 2)", f"{slope_central:.2f}")
show("slope, forward (expect 1)", f"{slope_forward:.2f}")
assert abs(slope_central - 2) < 0.2 and abs(slope_forward - 1) < 0.2
# and on the rounding side the error grows again as h shrinks, like 1/h
assert central[steps <= 1e-11].min() > 10 * central.min()

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped

if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(steps, central, "o-", ms=3, label="central difference (0.4)")
    ax.loglog(steps, forward, "s-", ms=3, alpha=0.7, label="forward difference")
    ax.loglog(steps, steps ** 2 * central[0] / steps[0] ** 2, "k--", lw=1, label="slope 2")
    ax.loglog(steps, 2.2e-16 / steps, "k:", lw=1, label="eps / h (rounding)")
    ax.axvline(1e-6, color="gray", lw=0.8)
    ax.text(1.2e-6, central.max() / 10, "gradcheck's h", color="gray", fontsize=8)
    ax.set_ylim(min(central.min(), forward.min()) / 10, max(central.max(), forward.max()) * 10)
    ax.set_xlabel("step h")
    ax.set_ylabel("|finite difference - exact derivative|")
    ax.set_title("Error of finite differences (0.5): truncation vs rounding")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figure = out_dir / "00_finite_difference_error.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    show("figure", figure)
    assert figure.stat().st_size > 0

# %% [markdown]
# `gradcheck` applies (0.4) to every element of every input and compares with backward.
# A non-scalar output is reduced with fixed random weights, $L = \sum w \odot f(x)$, so that
# each output element's gradient path is exercised.  Here it checks a small attention-like
# expression; then it catches a deliberately wrong backward ($d(x^2)/dx = x$ instead of $2x$).

# %%
q = md.tensor(backend.randn(2, 3), requires_grad=True)
k = md.tensor(backend.randn(4, 3), requires_grad=True)
vals = md.tensor(backend.randn(4, 2), requires_grad=True)


def attention(q, k, vals):
    return md.softmax(q @ k.T / math.sqrt(3), axis=-1) @ vals


assert gradcheck(attention, q, k, vals)
print("gradcheck(attention): backward agrees with central differences")

numeric = numerical_gradient(lambda a: (a * a).sum(), [q], 0, None, 1e-6)
assert np.allclose(backend.to_host(numeric), 2 * q.numpy(), atol=1e-8)


def wrong_square(a):
    return md.Tensor._make(a.data ** 2, (a,), lambda g: (g * a.data,), "wrong_square")


try:
    gradcheck(wrong_square, md.tensor([0.5, -1.0], requires_grad=True))
except AssertionError as error:
    print(f"a wrong backward is caught: {error}")
else:
    raise AssertionError("gradcheck missed a wrong backward")

# %% [markdown]
# ## Summary
#
# * (0.1)/(0.2): backward multiplies local derivatives, and gradients of all paths add.
# * The graph is walked in reverse topological order, so each node's gradient is complete
#   before it is passed on.
# * (0.3): broadcasting an input means summing its gradient over the broadcast axes.
# * (0.4)/(0.5): central differences check every operation; their error is $O(h^2)$ until
#   rounding takes over, best near $h \approx 10^{-6}$ in float64.
#
# `tests/test_ops_gradcheck.py` runs `gradcheck` on every operation over random shapes, axes
# and broadcast patterns.  Next: lesson 01, the forward (noising) process.

# %%
md.set_default_dtype("float32")
print("lesson 00: all checks passed")
