"""Data-parallel training over MPI: N processes ("ranks") train one model together.

    mpiexec -n 4 minidiff train --preset mnist --distributed

Every rank builds the same model from the same seed and holds all of it.  Step k's global batch
of B images (``batch_indices``, and t and eps drawn for all B from minidiff's generator, whose
state is the same on every rank) is cut into N equal slices of b = B/N, and rank r computes the
loss and gradients of slice r only.  Since the loss is a mean over items,

    L = (1/B) sum_i l_i = (1/N) sum_r L_r,    L_r = (1/b) sum_{i in slice r} l_i,

so grad L = (1/N) sum_r grad L_r: one Allreduce (sum) of the ranks' gradients, divided by N,
gives every rank the gradient of the whole batch, and clipping, AdamW and the EMA then do the
same arithmetic on every rank.  N ranks with batch B/N each therefore take the same steps as one
process with batch B (to float rounding), and the batch size and learning rate of a
configuration mean the same on any number of ranks.

The gradients travel in one flat buffer, in the model's parameter order, with two more numbers:

    [ grad of parameter 1 | ... | grad of parameter P | loss_r | stop_r ]

Summed over ranks and divided by N, the loss slot holds the global batch's loss (what rank 0
logs) and the stop slot is > 0 when any rank was asked to stop (Ctrl-C, SIGTERM): every rank
learns it in the same Allreduce and all stop after the same step, with no extra message.

**CuPy.**  The flat buffer is built on the device with one concatenation, copied to host memory,
reduced there and copied back (two PCIe copies of the buffer per step, ~1 ms for the 6.5 MB of
the reference U-Net).  This works with any MPI build, needs no CUDA-aware MPI and no NCCL
set-up, and costs little next to the network transfer itself; NCCL (``cupy.cuda.nccl``) would
save the two copies on a multi-GPU machine and is not implemented.

mpi4py is imported only here, and only when ``connect()`` is called (``--distributed``).
"""
from __future__ import annotations

import hashlib
import time

from minidiff import backend
from minidiff.errors import MinidiffInputError

__all__ = ["Distributed", "DistributedError", "connect", "MISSING_MPI"]

MISSING_MPI = ("--distributed needs mpi4py and an MPI library: pip install 'minidiff[mpi]' "
               "(mpi4py and the mpich wheel), then launch with mpiexec -n N minidiff train "
               "... --distributed")


class DistributedError(MinidiffInputError):
    """MPI is missing, or the ranks cannot train together (batch split, differing state)."""


def connect() -> "Distributed":
    """Join the MPI job this process was started in (a job of one without ``mpiexec``)."""
    try:
        from mpi4py import MPI  # noqa: PLC0415  (lazy: only with --distributed)
    except ImportError:
        raise DistributedError(MISSING_MPI) from None
    return Distributed(MPI.COMM_WORLD, MPI)


class Distributed:
    """One rank's view of the job: rank, size, the gradient Allreduce and agreement checks."""

    def __init__(self, comm, mpi):
        self.comm, self._mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_main = self.rank == 0
        self.reduce_calls, self.reduce_seconds, self.reduce_bytes = 0, 0.0, 0

    def part(self, batch_size: int) -> slice:
        """This rank's slice of a global batch of ``batch_size`` items."""
        if batch_size % self.size:
            raise DistributedError(f"batch_size: expected a multiple of the {self.size} ranks "
                                   f"(each rank takes an equal slice), got {batch_size}")
        b = batch_size // self.size
        return slice(self.rank * b, (self.rank + 1) * b)

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""
        self.comm.Barrier()

    def average(self, params, loss: float, stop: bool) -> tuple[float, bool]:
        """Replace every parameter's gradient by its mean over the ranks, in one Allreduce;
        returns (mean loss over the ranks, whether any rank asked to stop)."""
        params = [p for p in params if p.grad is not None]
        xp = backend.array_module_of(params[0].grad)
        dtype = params[0].grad.dtype
        flat = xp.concatenate([p.grad.ravel() for p in params]
                              + [xp.asarray([loss, 1.0 if stop else 0.0], dtype=dtype)])
        host = backend.to_host(flat)       # the same array on NumPy; a copy from the GPU
        tick = time.perf_counter()
        self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
        self.reduce_seconds += time.perf_counter() - tick
        self.reduce_calls += 1
        self.reduce_bytes = host.nbytes
        host /= self.size
        flat = backend.to_device(host, backend.backend_name_of(params[0].grad))
        start = 0
        for p in params:
            p.grad = flat[start:start + p.grad.size].reshape(p.grad.shape)
            start += p.grad.size
        return float(host[-2]), bool(host[-1] > 0)

    def check_same(self, **values: str) -> None:
        """Raise ``DistributedError`` on every rank if any rank's ``values`` differ from rank
        0's (strings: digests, step numbers), so that no rank trains on alone."""
        root = self.comm.bcast(values, root=0)
        mine = sorted(name for name in values if values[name] != root.get(name))
        everyone = self.comm.allgather(mine)
        bad = [f"rank {r}: {', '.join(names)}" for r, names in enumerate(everyone) if names]
        if bad:
            raise DistributedError("ranks disagree with rank 0 (" + "; ".join(bad) + "); start "
                                   "every rank with the same configuration, seed, checkpoint "
                                   "and minidiff version")

    def summary(self) -> str:
        """One line on the gradient Allreduce: buffer size and mean time per step."""
        mean = self.reduce_seconds / max(self.reduce_calls, 1)
        return (f"allreduce over {self.size} ranks: {self.reduce_bytes / 1e6:.2f} MB per step, "
                f"{mean * 1e3:.2f} ms per step on average ({self.reduce_calls} steps, "
                f"waiting for the slowest rank included)")


def digest(arrays) -> str:
    """SHA-256 of the bytes of ``arrays`` in order (device arrays are copied to the host)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(backend.to_host(a).tobytes())
    return h.hexdigest()
