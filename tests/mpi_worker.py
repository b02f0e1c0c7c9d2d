"""Run by tests/test_distributed.py under ``mpiexec -n N`` (not a test module itself).

    python -m tests.mpi_worker OUT STEPS [--distributed] [--float64]

Trains the tiny test U-Net of tests/test_train.py on 64 random 16x16 images for STEPS steps
into the run folder OUT/run_rank{r} (only rank 0 may write there), and writes every rank's
final weights to OUT/weights_rank{r}.npz (the test compares them with each other and with a
one-process run), its pid to OUT/pid_rank{r} once its first step is done (its Ctrl-C
handler is then in place), and "rank r: STATUS at step S" on stdout.
"""
import os
import sys

from minidiff import backend
from minidiff.train import diagnostics
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "T": 50, "batch_size": 4, "image_size": 16,
        "warmup_steps": 2, "train_images": 64, "log_every": 0, "sample_every": 0,
        "checkpoint_every": 0, "diag_every": 0, "sample_count": 4, "sample_steps": 3,
        "ema_decay": 0.9, "lr": 1e-3}


def images():
    """64 random 16x16 "images" (MNIST's checksum alone would take longer than the run)."""
    return backend.host.random.default_rng(0).integers(0, 256, (64, 1, 16, 16), dtype="uint8")


class _Trainer(Trainer):
    pid_file = None

    def train_step(self):
        value = super().train_step()
        if self.step == 1 and self.pid_file:
            with open(self.pid_file + ".tmp", "w", encoding="utf-8") as stream:
                stream.write(str(os.getpid()))
            os.replace(self.pid_file + ".tmp", self.pid_file)   # the test never reads half
        return value


def train(out: str, steps: int, distributed=None, pid_file=None):
    config = resolve("quick", overrides={**TINY, "steps": steps})
    trainer = _Trainer(config, out, images=images(), log=lambda line: None,
                       distributed=distributed)
    trainer.pid_file = pid_file
    status = trainer.run()
    return trainer, status


def main(argv):
    diagnostics.plot_loss_curve = lambda *args, **kwargs: None   # importing matplotlib takes ~1.5 s
    out, steps = argv[0], int(argv[1])
    if "--float64" in argv:
        backend.set_default_dtype("float64")
    ranks = None
    if "--distributed" in argv:
        from minidiff.train.distributed import connect  # noqa: PLC0415
        ranks = connect()
    rank = ranks.rank if ranks else 0
    os.makedirs(out, exist_ok=True)
    trainer, status = train(os.path.join(out, f"run_rank{rank}"), steps, ranks,
                            os.path.join(out, f"pid_rank{rank}"))
    weights = {k: backend.to_host(v) for k, v in trainer.model.state_dict().items()}
    backend.save_npz(os.path.join(out, f"weights_rank{rank}.npz"), weights)
    print(f"rank {rank}: {status} at step {trainer.step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
