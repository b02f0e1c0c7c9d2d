"""Data-parallel training (minidiff.train.distributed): the math of splitting a batch, checked
in-process against the whole batch; then real 2-rank MPI jobs (``mpiexec -n 2``, skipped with
the reason when mpi4py or mpiexec is missing) against a one-process run, against each other,
under Ctrl-C on one rank, and through the command line with --resume; and the one-line
message when mpi4py is missing."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from minidiff import backend
from minidiff.diffusion import training_step
from minidiff.models.unet import UNet
from minidiff.commands import train as cli
from minidiff.checkpoint import load_checkpoint
from minidiff.config.build import schedule_from_config
from minidiff.train.distributed import Distributed, DistributedError
from minidiff.config.build import model_config
from minidiff.config.presets import resolve
from tests import mpi_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- without MPI

class _FakeComm:
    """A communicator whose Allreduce adds the buffer ``other`` (another rank's) in place."""
    IN_PLACE, SUM = "in place", "sum"

    def __init__(self, rank, size, other=None):
        self.rank, self.size, self.other = rank, size, other

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Allreduce(self, sendbuf, recvbuf, op):
        assert sendbuf is self.IN_PLACE and op is self.SUM
        assert type(recvbuf) is type(self.other)    # reduced in host memory, whatever the backend
        recvbuf += self.other


def test_batch_must_split_evenly_over_ranks():
    ranks = Distributed(_FakeComm(1, 2), mpi=None)
    assert ranks.part(8) == slice(4, 8) and not ranks.is_main
    with pytest.raises(DistributedError, match="batch_size: expected a multiple of the 2 "
                                               "ranks.*got 5"):
        ranks.part(5)


def test_average_packs_one_buffer_and_unpacks_the_mean():
    """Gradients, loss and stop flag travel in one host buffer; each gradient comes back as
    the mean over the ranks, in its shape and on its backend; a missing gradient stays so."""
    from minidiff.nn.module import Parameter  # noqa: PLC0415
    params = [Parameter(backend.randn(2, 3)), Parameter(backend.randn(4)),
              Parameter(backend.randn(5))]
    mine = [backend.randn(2, 3), backend.randn(4), None]
    for p, g in zip(params, mine):
        p.grad = g
    theirs = backend.host.arange(12, dtype=backend.host.float32)   # 10 gradients, loss, stop
    theirs[-2:] = [3.0, 1.0]
    ranks = Distributed(_FakeComm(0, 2, other=theirs), mpi=_FakeComm)
    loss, stop = ranks.average(params, 1.0, stop=False)
    assert loss == 2.0 and stop is True and ranks.reduce_bytes == 12 * 4
    expected = [(backend.to_host(mine[0]) + theirs[:6].reshape(2, 3)) / 2,
                (backend.to_host(mine[1]) + theirs[6:10]) / 2]
    for p, e in zip(params, expected):
        assert backend.backend_name_of(p.grad) == backend.get_backend()
        assert abs(backend.to_host(p.grad) - e).max() < 1e-6
    assert params[2].grad is None


def test_mean_of_slice_gradients_is_the_batch_gradient():
    """The identity data parallelism rests on: with t and eps drawn for the whole batch, the
    mean over ranks of each slice's gradient is the whole batch's gradient, and every slice
    leaves the generator where the whole batch does (float64, so to ~1e-12)."""
    backend.set_default_dtype("float64")
    config = resolve("quick", overrides=mpi_worker.TINY)
    backend.manual_seed(0)
    model = UNet(model_config(config))
    schedule = schedule_from_config(config)
    x0 = backend.randn(6, 1, 16, 16)
    start = backend.get_rng_state()

    def grads(part):
        backend.set_rng_state(start)
        model.zero_grad()
        loss = training_step(model, schedule, x0, target_type="v", part=part, x0_range=None)
        loss.backward()
        return float(loss.item()), [backend.to_host(p.grad) for p in model.parameters()], \
            backend.get_rng_state()

    whole_loss, whole, whole_state = grads(None)
    parts = [grads(slice(r * 2, r * 2 + 2)) for r in range(3)]
    assert sum(p[0] for p in parts) / 3 == pytest.approx(whole_loss, rel=1e-12)
    for i, g in enumerate(whole):
        mean = sum(p[1][i] for p in parts) / 3
        assert abs(mean - g).max() <= 1e-12 * (1 + abs(g).max())
    assert all(p[2] == whole_state for p in parts)


def test_rng_offset_draws_elsewhere_and_ends_where_plain_draws_end():
    backend.manual_seed(3)
    plain = backend.to_host(backend.rand(1000))
    next_plain = backend.to_host(backend.rand(5))
    backend.manual_seed(3)
    with backend.rng_offset(1 << 64):
        offset = backend.to_host(backend.rand(1000))
    assert (backend.to_host(backend.rand(5)) == next_plain).all()
    assert (plain != offset).all()                     # another stretch of the stream
    assert abs(backend.host.corrcoef(plain, offset)[0, 1]) < 0.1


def test_parts_get_their_own_dropout_masks_and_end_in_the_same_state():
    """Two parts with identical images, t and eps: without their own masks their losses would
    be equal (slice 1 would reuse slice 0's masks); the generator must end the same."""
    config = resolve("quick", overrides={**mpi_worker.TINY, "dropout": 0.5})
    backend.manual_seed(0)
    model = UNet(model_config(config)).train()
    schedule = schedule_from_config(config)
    half = backend.randn(2, 1, 16, 16).clip(-1.0, 1.0)
    x0 = backend.xp().concatenate([half, half])
    t = backend.to_device(backend.host.array([7, 30, 7, 30]))
    noise = backend.xp().concatenate([half * 0.5, half * 0.5])
    start = backend.get_rng_state()
    losses, states = [], []
    for part in (slice(0, 2), slice(2, 4)):
        backend.set_rng_state(start)
        losses.append(training_step(model, schedule, x0, target_type="v", t=t, noise=noise,
                                    part=part).item())
        states.append(backend.get_rng_state())
    assert losses[0] != losses[1]
    assert states[0] == states[1]
    model.eval()                            # and without dropout the two parts are the same
    assert training_step(model, schedule, x0, "v", t=t, noise=noise, part=slice(0, 2)).item() \
        == training_step(model, schedule, x0, "v", t=t, noise=noise, part=slice(2, 4)).item()


def test_missing_mpi4py_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mpi4py", None)    # "import mpi4py" now raises
    code = cli.main(["--distributed", "--steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "mpi4py" in err and "pip install 'minidiff[mpi]'" in err and "mpiexec" in err
    assert not (tmp_path / "run").exists()


def test_mpi4py_is_imported_only_with_distributed():
    check = ("import sys; from minidiff.commands import train; from minidiff.train import trainer; "
             "assert 'mpi4py' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- under mpiexec

def _mpiexec():
    """(mpiexec command, why not) for the MPI next to this Python (the mpich wheel puts it in
    the environment's bin/) or on PATH."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install -e '.[mpi]')"
    found = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")]
    found = [path for path in found if path and os.access(path, os.X_OK)]
    if not found:
        return None, "no mpiexec next to Python or on PATH (pip install -e '.[mpi]')"
    command = [found[0], "-n", "2"]
    version = subprocess.run([found[0], "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:   # mpich's hydra needs neither
        command += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return command, None


MPIEXEC, NO_MPI = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=f"2-rank MPI tests: {NO_MPI}")


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if backend.get_backend() != "numpy":
        env["MINIDIFF_BACKEND"] = backend.get_backend()
    return env


def _launch(args, **kwargs):
    return subprocess.Popen(MPIEXEC + [sys.executable, "-m", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _finish(process, timeout=120):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out


def _weights(path):
    return backend.load_npz(str(path))


@needs_mpi
def test_two_ranks_match_one_process_and_each_other(tmp_path):
    steps = 4
    code, out = _finish(_launch(["tests.mpi_worker", str(tmp_path), str(steps),
                                 "--distributed", "--float64"]))
    assert code == 0, out
    assert (tmp_path / "weights_rank1.npz").exists(), \
        f"mpiexec started two separate 1-rank jobs: mpi4py and mpiexec use different MPIs\n{out}"
    rank0, rank1 = (_weights(tmp_path / f"weights_rank{r}.npz") for r in (0, 1))
    assert all((rank0[k] == rank1[k]).all() for k in rank0)             # identical, bit for bit
    # rank 0 alone wrote the run's files
    assert (tmp_path / "run_rank0" / "checkpoint.npz").exists()
    assert not (tmp_path / "run_rank1").exists()
    # one process with the whole batch of 4, in this process, also in float64
    backend.set_default_dtype("float64")
    reference, status = mpi_worker.train(str(tmp_path / "one"), steps)
    assert status == "done"
    for name, value in reference.model.state_dict().items():
        assert abs(rank0[name] - backend.to_host(value)).max() < 1e-9, name
    history = load_checkpoint(str(tmp_path / "run_rank0" / "checkpoint.npz"))["history.loss"]
    assert history.tolist() == pytest.approx(reference.losses, rel=1e-10)


@needs_mpi
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    process = _launch(["tests.mpi_worker", str(tmp_path), "100000", "--distributed"])
    pid_file = tmp_path / "pid_rank1"
    deadline = time.time() + 60
    while not pid_file.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not pid_file.exists():                          # never leave a 100,000-step job behind
        process.kill()
        pytest.fail("rank 1 never finished its first step:\n" + process.communicate()[0])
    os.kill(int(pid_file.read_text()), signal.SIGINT)
    code, out = _finish(process)
    assert code == 0, out
    lines = sorted(line for line in out.splitlines() if line.startswith("rank "))
    assert len(lines) == 2 and "interrupted" in lines[0], out
    step = int(lines[0].split()[-1])
    assert lines == [f"rank 0: interrupted at step {step}", f"rank 1: interrupted at step {step}"]
    checkpoint = load_checkpoint(str(tmp_path / "run_rank0" / "checkpoint.npz"))
    assert int(checkpoint["step"]) == step > 0


@needs_mpi
def test_cli_distributed_run_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["minidiff", "train", "--distributed", "--out", str(out), "--steps", "4",
            "--batch-size", "4", "--train-images", "64", "--base-channels", "8",
            "--set", "channel_mults=[1,2]", "--set", "log_every=1", "--set", "sample_every=0",
            "--set", "diag_every=0", "--set", "checkpoint_every=0"]
    code, text = _finish(_launch(args + ["--stop-at", "2"]))
    assert code == 0, text
    assert "batch 4, 2 on each of 2 ranks" in text and text.count("step      1/4") == 1
    code, text = _finish(_launch(args + ["--resume"]))
    assert code == 0, text
    assert "resumed from" in text and "at step 2" in text and "done: 4/4 steps" in text
    assert "allreduce over 2 ranks" in text
    assert len(load_checkpoint(str(out / "checkpoint.npz"))["history.loss"]) == 4
