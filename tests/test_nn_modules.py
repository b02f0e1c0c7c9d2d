"""Modules: parameter discovery, modes, strict state dicts and .npz files, PyTorch-default
initialisation, and gradient checks through each layer (lesson 05)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend, nn, tensor
from minidiff.gradcheck import gradcheck

FAST = settings(deadline=None, max_examples=10)


@pytest.fixture
def float64():
    backend.set_default_dtype("float64")
    yield
    backend.set_default_dtype("float32")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(0.5)
        self.heads = nn.ModuleList([nn.Linear(4, 3), nn.Linear(3, 2, bias=False)])
        self.scale = nn.Parameter(backend.xp().ones(1, dtype=backend.default_dtype()))

    def forward(self, x):
        h = self.drop(self.act(self.norm(self.conv(x)))).mean(axis=(2, 3))
        for layer in self.heads:
            h = layer(h)
        return h * self.scale


def test_named_parameters_found_by_attribute():
    names = [name for name, _ in Block().named_parameters()]
    # a module's own parameters first, then each child's in attribute order (as in PyTorch)
    assert names == ["scale", "conv.weight", "conv.bias", "norm.weight", "norm.bias",
                     "heads.0.weight", "heads.0.bias", "heads.1.weight"]
    assert len(Block().parameters()) == 8


def test_shared_parameter_counted_once():
    seq = nn.Sequential(nn.Linear(2, 2), nn.SiLU())
    seq.tied = seq[0]
    assert len(seq.parameters()) == 2


def test_train_eval_reaches_every_descendant():
    block = Block()
    block.eval()
    assert all(not m.training for _, m in block.named_modules())
    x = tensor(np.random.default_rng(0).standard_normal((2, 2, 5, 5)))
    np.testing.assert_array_equal(block(x).numpy(), block(x).numpy())  # dropout is off
    block.train()
    assert block.drop.training and block.heads[1].training


def test_state_dict_round_trip_is_exact(tmp_path):
    backend.manual_seed(1)
    a = Block()
    backend.manual_seed(2)
    b = Block()
    assert not np.array_equal(backend.to_host(a.conv.weight.data),
                              backend.to_host(b.conv.weight.data))
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(backend.to_host(pa.data), backend.to_host(pb.data))
    path = tmp_path / "block.npz"
    a.save(path)
    c = Block()
    c.load(path)
    for pa, pc in zip(a.parameters(), c.parameters()):
        np.testing.assert_array_equal(backend.to_host(pa.data), backend.to_host(pc.data))
        assert pc.dtype == pa.dtype
    # the loaded arrays are copies, not views of the state dict
    state = a.state_dict()
    c.load_state_dict(state)
    state["scale"][...] = 7
    assert c.scale.item() == 1.0


def test_load_state_dict_lists_every_problem(tmp_path):
    block = Block()
    state = block.state_dict()
    del state["conv.bias"]
    del state["heads.1.weight"]
    state["extra.weight"] = np.zeros(3)
    state["norm.weight"] = np.zeros(5)
    before = backend.to_host(block.norm.bias.data).copy()
    with pytest.raises(nn.StateDictError) as info:
        block.load_state_dict(state)
    message = str(info.value)
    for needle in ["missing keys (2): conv.bias, heads.1.weight",
                   "unexpected keys (1): extra.weight", "norm.weight: expected (4,), got (5,)"]:
        assert needle in message
    np.testing.assert_array_equal(backend.to_host(block.norm.bias.data), before)
    backend.save_npz(tmp_path / "bad.npz", state)
    with pytest.raises(nn.StateDictError, match="missing keys"):
        block.load(tmp_path / "bad.npz")


def test_pytorch_default_initialisation_bounds():
    backend.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, groups=2)
    bound = 1 / np.sqrt(4 * 9)
    w = backend.to_host(conv.weight.data)
    assert w.shape == (16, 4, 3, 3) and np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.8 * bound  # really uniform over the whole range
    lin = nn.Linear(25, 3)
    assert np.abs(backend.to_host(lin.bias.data)).max() <= 0.2
    gn = nn.GroupNorm(2, 4)
    np.testing.assert_array_equal(backend.to_host(gn.weight.data), 1)
    np.testing.assert_array_equal(backend.to_host(gn.bias.data), 0)
    assert conv.weight.dtype == np.float32


def test_sequential_and_modulelist_indexing():
    seq = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[1], nn.SiLU)
    assert seq(tensor(np.ones((5, 3)))).shape == (5, 2)
    with pytest.raises(TypeError):
        nn.ModuleList([nn.Linear(1, 1), 3])


def test_module_gradchecks(float64):
    backend.manual_seed(0)
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
    block = Block().eval()
    assert gradcheck(lambda inp, *params: block(inp), x, *block.parameters())
    emb = nn.Embedding(6, 3)
    idx = tensor(np.array([[1, 5], [1, 0]]))
    assert gradcheck(lambda w: emb(idx), emb.weight)
    ln = nn.LayerNorm(4)
    assert gradcheck(lambda inp, *p: ln(inp), tensor(rng.standard_normal((3, 4)),
                                                    requires_grad=True), *ln.parameters())
    up = nn.ConvTranspose2d(2, 3, 2, stride=2)
    assert gradcheck(lambda inp, *p: up(inp), tensor(rng.standard_normal((1, 2, 2, 3)),
                                                    requires_grad=True), *up.parameters())


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.sampled_from([1, 2]), st.booleans(),
       st.booleans(), st.integers(0, 2 ** 16))
def test_multihead_attention_self_and_cross(lq, lk, heads, cross, masked, seed):
    backend.set_default_dtype("float64")
    try:
        backend.manual_seed(seed)
        rng = np.random.default_rng(seed)
        embed, ctx_dim = 2 * heads, 3 if cross else 2 * heads
        mha = nn.MultiheadAttention(embed, heads, context_dim=ctx_dim if cross else None)
        x = tensor(rng.standard_normal((2, lq, embed)), requires_grad=True)
        context = tensor(rng.standard_normal((2, lk, ctx_dim)), requires_grad=True) \
            if cross else None
        length = lk if cross else lq
        mask = tensor(np.tril(np.ones((lq, length), dtype=bool), k=length - 1)) \
            if masked else None
        out = mha(x, context, mask)
        assert out.shape == (2, lq, embed)
        inputs = (x, context) if cross else (x,)
        assert gradcheck(lambda a, *rest: mha(a, rest[0] if cross else None, mask),
                         *inputs, mha.q_proj.weight, mha.k_proj.bias, mha.out_proj.weight)
    finally:
        backend.set_default_dtype("float32")


def test_multihead_attention_equals_per_head_loop():
    backend.manual_seed(3)
    rng = np.random.default_rng(3)
    mha = nn.MultiheadAttention(6, 3, context_dim=4)
    x, c = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 5, 4))
    out = mha(tensor(x), tensor(c)).numpy()
    w = {name: p.numpy() for name, p in mha.named_parameters()}
    q = x @ w["q_proj.weight"].T + w["q_proj.bias"]
    k = c @ w["k_proj.weight"].T + w["k_proj.bias"]
    v = c @ w["v_proj.weight"].T + w["v_proj.bias"]
    heads = []
    for h in range(3):  # the loop the module avoids
        sl = slice(2 * h, 2 * h + 2)
        s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(2)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        heads.append(p @ v[..., sl])
    expected = np.concatenate(heads, -1) @ w["out_proj.weight"].T + w["out_proj.bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@FAST
@given(st.integers(1, 2), st.sampled_from([1, 2]), st.sampled_from([1, 3]),
       st.sampled_from([1, 2]), st.sampled_from([0, 1]), st.integers(3, 5),
       st.integers(0, 2 ** 16))
def test_layer_modules_gradcheck_on_drawn_shapes(n, groups, k, stride, pad, size, seed):
    backend.set_default_dtype("float64")
    try:
        backend.manual_seed(seed)
        rng = np.random.default_rng(seed)
        conv = nn.Conv2d(2 * groups, 2, k, stride=stride, padding=pad, groups=groups)
        norm = nn.GroupNorm(groups, 2 * groups)
        lin = nn.Linear(size, 3)
        ln = nn.LayerNorm(size)
        x = tensor(rng.standard_normal((n, 2 * groups, size, size)), requires_grad=True)
        norm.weight.data = backend.to_device(rng.standard_normal(2 * groups))
        assert gradcheck(lambda a, *p: conv(norm(a)), x, *conv.parameters(),
                         *norm.parameters())
        rows = tensor(rng.standard_normal((n, 2, size)), requires_grad=True)
        assert gradcheck(lambda a, *p: lin(ln(a)), rows, *lin.parameters(), *ln.parameters())
    finally:
        backend.set_default_dtype("float32")
