"""Benchmark: forward + backward time of the U-Net's layers, minidiff vs PyTorch (lesson 05).

    python -m minidiff.bench.layers [--json] [--repeat N] [--batch B]

Shapes are those of the small MNIST U-Net (batch 64): 3x3 convolutions at 32ch 28x28, 64ch
14x14 and 7x7, the stride-2 downsample 32->64 (28->14), a 1x1 projection 64->32; GroupNorm
with 8 groups at 32ch 28x28 and 64ch 14x14; SiLU; and 4-head attention over 49 tokens of
width 64.  All float32 on the CPU.

Where ``torch`` imports, the same op runs in PyTorch in the same process, in two rounds of
back-to-back repeats per framework (minidiff x k, torch x k, minidiff x k, torch x k, with
k = ceil(repeat / 2)), so that both see the same machine load.  Not one call each in turn:
after each op torch's OpenMP threads spin for a while before they sleep, and on a 2-core
machine that spinning took the cores from the NumPy call timed next (a 7x7 conv measured
14-18 ms right after a torch call, 10 ms after its own repeat).  Each row reports the
minimum over repeats and the ratio minidiff / torch.  Both get ``--threads`` threads (default:
minidiff's own count, ``minidiff.backend.threads``).

The "U-Net weighted total" sums conv + GroupNorm + SiLU rows weighted by how many times each
shape occurs in one U-Net forward/backward, and compares the totals.
"""
from __future__ import annotations


from minidiff import backend
from minidiff.bench import NO_TORCH, import_torch, timed, torch_device
from minidiff.nn import functional as F
from minidiff.tensor import Tensor

__all__ = ["run", "CASES"]

# name, kind, arguments, weight in one U-Net pass (how often the shape occurs)
CASES = [
    ("conv3x3 32->32 28x28", "conv", dict(c=32, o=32, hw=28, k=3, s=1, p=1), 4),
    ("conv3x3 64->64 14x14", "conv", dict(c=64, o=64, hw=14, k=3, s=1, p=1), 4),
    ("conv3x3 64->64 7x7", "conv", dict(c=64, o=64, hw=7, k=3, s=1, p=1), 4),
    ("conv3x3 s2 32->64 28->14", "conv", dict(c=32, o=64, hw=28, k=3, s=2, p=1), 1),
    ("conv1x1 64->32 28x28", "conv", dict(c=64, o=32, hw=28, k=1, s=1, p=0), 1),
    ("groupnorm 32ch g8 28x28", "gn", dict(c=32, hw=28, g=8), 4),
    ("groupnorm 64ch g8 14x14", "gn", dict(c=64, hw=14, g=8), 4),
    ("silu 32ch 28x28", "silu", dict(c=32, hw=28), 4),
    ("silu 64ch 14x14", "silu", dict(c=64, hw=14), 4),
    ("attention 49 tok 64d 4h", "attn", dict(t=49, d=64, h=4), 0),
]


def _inputs(kind, a, batch):
    """Host float32 arrays for one case: (x, extra arrays...)."""
    f32 = "float32"
    if kind == "conv":
        return [backend.randn(batch, a["c"], a["hw"], a["hw"], dtype=f32),
                backend.randn(a["o"], a["c"], a["k"], a["k"], dtype=f32) * 0.1,
                backend.randn(a["o"], dtype=f32)]
    if kind == "gn":
        return [backend.randn(batch, a["c"], a["hw"], a["hw"], dtype=f32),
                backend.randn(a["c"], dtype=f32), backend.randn(a["c"], dtype=f32)]
    if kind == "silu":
        return [backend.randn(batch, a["c"], a["hw"], a["hw"], dtype=f32)]
    d = a["d"] // a["h"]
    return [backend.randn(batch, a["h"], a["t"], d, dtype=f32) for _ in range(3)]


def _ours(kind, a, arrays):
    ts = [Tensor(x, requires_grad=True) for x in arrays]
    if kind == "conv":
        out = F.conv2d(ts[0], ts[1], ts[2], a["s"], a["p"])
    elif kind == "gn":
        out = F.group_norm(ts[0], a["g"], ts[1], ts[2])
    elif kind == "silu":
        out = F.silu(ts[0])
    else:
        out = F.scaled_dot_product_attention(*ts)
    out.backward(backend.xp().ones_like(out.data))


def _theirs(torch, kind, a, tensors):
    ts = [t.detach().requires_grad_(True) for t in tensors]
    fn = torch.nn.functional
    if kind == "conv":
        out = fn.conv2d(ts[0], ts[1], ts[2], a["s"], a["p"])
    elif kind == "gn":
        out = fn.group_norm(ts[0], a["g"], ts[1], ts[2])
    elif kind == "silu":
        out = fn.silu(ts[0])
    else:
        out = fn.scaled_dot_product_attention(*ts)
    out.backward(torch.ones_like(out))


def run(args) -> dict:
    """Time every case; returns {"rows": [...], "total": {...}} (seconds, minimum of repeats)."""
    torch = None if args.no_torch else import_torch(args.threads)
    device = torch_device(torch)
    backend.manual_seed(0)
    rows = []
    for name, kind, a, weight in CASES:
        arrays = _inputs(kind, a, args.batch)
        ours, theirs = [], []
        tt = [torch.from_numpy(backend.to_host(x)).to(device) for x in arrays] if torch else None
        _ours(kind, a, arrays)  # warm up both
        if torch:
            _theirs(torch, kind, a, tt)
        for _ in range(2):  # two rounds of back-to-back repeats per framework
            for _ in range((args.repeat + 1) // 2):
                ours.append(timed(lambda: _ours(kind, a, arrays)))
            if torch:
                for _ in range((args.repeat + 1) // 2):
                    theirs.append(timed(lambda: _theirs(torch, kind, a, tt), torch, device))
        row = {"name": name, "weight": weight, "minidiff_ms": 1e3 * min(ours)}
        if torch:
            row["torch_ms"] = 1e3 * min(theirs)
            row["ratio"] = row["minidiff_ms"] / row["torch_ms"]
        rows.append(row)
    total = {"minidiff_ms": sum(r["weight"] * r["minidiff_ms"] for r in rows)}
    if torch:
        total["torch_ms"] = sum(r["weight"] * r["torch_ms"] for r in rows)
        total["ratio"] = total["minidiff_ms"] / total["torch_ms"]
    return {"batch": args.batch, "repeat": args.repeat, "threads": args.threads,
            "torch": torch.__version__ if torch else None, "torch_device": device,
            "backend": backend.get_backend(), "rows": rows, "total": total}


def _print_table(result) -> None:
    has_torch = result["torch"] is not None
    print(f"forward+backward, float32, batch {result['batch']}, min of {result['repeat']}, "
          f"{result['threads']} threads, backend {result['backend']}"
          + (f", torch {result['torch']} on {result['torch_device']}" if has_torch
             else NO_TORCH))
    head = f"{'op':28s} {'minidiff ms':>12s}" + (f" {'torch ms':>10s} {'ratio':>7s}"
                                                if has_torch else "")
    print(head)
    print("-" * len(head))
    for r in result["rows"] + [dict(result["total"], name="U-Net weighted conv+GN+SiLU")]:
        line = f"{r['name']:28s} {r['minidiff_ms']:12.2f}"
        if has_torch:
            line += f" {r['torch_ms']:10.2f} {r['ratio']:7.2f}"
        print(line)
