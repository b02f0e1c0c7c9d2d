"""A run folder holds one run: a resumed run is the run it says it is (its configuration
unchanged except how long it runs and its bookkeeping), and of two trainings started into one
folder at once, one refuses (``minidiff.train.lock``)."""
import json
import os
import subprocess
import sys

import pytest

from minidiff.checkpoint import load_checkpoint
from minidiff.commands import train as cli
from minidiff.config.checks import ConfigError
from minidiff.train.lock import LOCK_NAME, RunLock, RunLockedError, check_run_lock
from minidiff.train.trainer import resume_changes

TINY = ["--set", "base_channels=8", "--set", "channel_mults=[1,2]", "--set", "T=10",
        "--batch-size", "4", "--train-images", "16", "--set", "sample_every=0",
        "--set", "diag_every=0", "--set", "log_every=1", "--set", "checkpoint_every=0",
        "--set", "warmup_steps=1", "--set", "sample_steps=2"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "run")
    assert cli.main(["--out", out, "--steps", "2", *TINY]) == 0
    return out


def _config(out):
    with open(os.path.join(out, "config.json"), encoding="utf-8") as stream:
        return json.load(stream)


@pytest.mark.parametrize("changes, named", [
    (["--set", "lr=0.5", "--set", "batch_size=8"], ["lr 0.001 -> 0.5", "batch_size 4 -> 8"]),
    (["--preset", "mnist"], ["base_channels 8 -> 32", "T 10 -> 1000"]),
    (["--lr", "0.01"], ["lr 0.001 -> 0.01"]),
])
def test_resume_refuses_a_changed_configuration(run, changes, named, capsys):
    before = _config(run)
    assert cli.main(["--out", run, "--resume", *changes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minidiff: --resume:")
    for text in named:
        assert text in err
    assert _config(run) == before                  # config.json is not rewritten
    assert load_checkpoint(os.path.join(run, "checkpoint.npz"))["step"] == 2


def test_resume_with_the_same_preset_and_sets_is_the_same_run(run, capsys):
    """The command that started the run, plus --resume (and a longer --steps), continues it."""
    assert cli.main(["--out", run, "--resume", "--preset", "quick", "--steps", "3",
                     *TINY]) == 0
    out = capsys.readouterr().out
    assert "extending the run: steps 2 -> 3" in out
    assert load_checkpoint(os.path.join(run, "checkpoint.npz"))["step"] == 3
    assert _config(run)["steps"] == 3


def test_resume_changes_allows_only_steps_and_bookkeeping():
    saved = {"lr": 1e-3, "steps": 10, "log_every": 5, "T": 10}
    assert resume_changes(saved, dict(saved), "c.npz", 10) == []
    assert resume_changes(saved, {**saved, "steps": 20, "log_every": 1}, "c.npz", 10) == [
        "log_every 5 -> 1", "steps 10 -> 20"]
    with pytest.raises(ConfigError, match=r"T 10 -> 20, lr 0.001 -> 0.002"):
        resume_changes(saved, {**saved, "lr": 2e-3, "T": 20}, "c.npz", 10)
    with pytest.raises(ConfigError, match=r"--steps: .*already at step 10"):
        resume_changes(saved, {**saved, "steps": 5}, "c.npz", 10)


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    with RunLock(folder) as lock:
        with open(lock.path, encoding="ascii") as stream:
            assert int(stream.read()) == os.getpid()
        with pytest.raises(RunLockedError, match=rf"--out: .* in use .*pid {os.getpid()}"):
            RunLock(folder)
        with pytest.raises(RunLockedError, match="in use"):
            check_run_lock("--out", folder)
    assert not os.path.exists(os.path.join(folder, LOCK_NAME))
    assert not os.path.exists(folder)             # it made the folder, left it empty: removed
    os.makedirs(folder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(folder, LOCK_NAME), "w", encoding="ascii") as stream:
        stream.write(dead + "\n")
    notes = []
    with RunLock(folder, note=notes.append):
        assert len(notes) == 1 and f"process {dead}" in notes[0] and "no longer" in notes[0]
    assert os.listdir(folder) == []


def test_two_trainings_started_at_once_one_refuses(tmp_path):
    out = str(tmp_path / "run")
    command = [sys.executable, "-m", "minidiff", "train", "--out", out, "--steps", "6", *TINY]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    jobs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    for job in jobs:
        job.stdout.close()
        job.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another training" in refused or "already holds a run" in refused
    assert len(refused.strip().splitlines()) == 1
    assert _config(out)["steps"] == 6
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))["step"] == 6
    assert not os.path.exists(os.path.join(out, LOCK_NAME))


class _Comm:
    """rank 0's broadcast, as the other ranks receive it."""

    def __init__(self, sent):
        self.sent, self.calls = sent, []

    def bcast(self, value, root=0):
        self.calls.append(value)
        return self.sent


class _Ranks:
    def __init__(self, rank, sent=None):
        self.rank, self.size, self.is_main = rank, 2, rank == 0
        self.comm = _Comm(sent)

    def part(self, batch_size):
        raise AssertionError("a refused run must stop before splitting the batch")

    barrier = part


def test_every_rank_stops_when_rank_0_finds_the_folder_in_use(tmp_path, monkeypatch, capsys):
    """Under MPI only rank 0 takes the lock; its refusal is broadcast, so rank 1 stops with it
    (quietly) instead of waiting for rank 0 at the next barrier."""
    folder = tmp_path / "run"
    with RunLock(str(folder)):
        rank0 = _Ranks(0)
        monkeypatch.setattr(cli, "connect", lambda: rank0)
        assert cli.main(["--out", str(folder), "--distributed", "--steps", "2", *TINY]) == 2
        assert "in use by another training" in rank0.comm.calls[0]
        assert "in use" in capsys.readouterr().err
        rank1 = _Ranks(1, sent="--out: the folder is in use by another training")
        monkeypatch.setattr(cli, "connect", lambda: rank1)
        assert cli.main(["--out", str(folder), "--distributed", "--steps", "2", *TINY]) == 2
        assert rank1.comm.calls == [None] and capsys.readouterr().err == ""
