"""``minidiff train``: train the DDPM U-Net (or the autoencoder) on MNIST from a preset.

    minidiff train --preset quick                       # its time: data/checkpoints/quick.md
    minidiff train --preset mnist --out runs/mnist      # the reference configuration
    minidiff train --preset ae-quick                    # the autoencoder of lesson 09
    minidiff train --preset quick --set lr=2e-3 --steps 2000 --config my.json
    minidiff train --out runs/quick --resume            # continue from runs/quick/checkpoint.npz
    mpiexec -n 4 minidiff train --preset mnist --distributed   # 4 ranks, 32 images each

Writes into ``--out``: ``checkpoint.npz`` (model, EMA, AdamW, generator state, step,
config), ``config.json``, ``loss.png``, ``loss_by_t.png``, ``samples_*.png`` (EMA weights,
DDIM) and ``x0_pred_*.png``; for an autoencoder ``reconstructions_*.png`` (originals above,
reconstructions below), ``loss_rec.png``, ``loss_kl.png``, and the latent scale factor in both
checkpoint files.  Errors in the input end with one line ``minidiff: ...``.

``--resume`` continues the run it names, so it refuses a configuration that differs from the
checkpoint's (``--set``, ``--config``, a flag, or a ``--preset`` other than the run's), naming
each key with its old and new value; only ``--steps`` (a longer run: the cosine decay is
stretched to the new end, and this is said) and the bookkeeping keys (``log_every``,
``sample_every``, ``checkpoint_every``, ``diag_every``, ``sampler``, ``sample_steps``,
``sample_count``) may change.  One training writes into a folder at a time: ``OUT/.lock``
holds its process id while it runs (``minidiff.train.lock``); a second training into the same
folder refuses.  With ``--distributed`` (under mpiexec) rank 0 alone writes and prints.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

from minidiff import backend
from minidiff.checkpoint import CheckpointError, load_checkpoint
from minidiff.commands._args import ArgumentParser, command
from minidiff.config.presets import PRESETS, resolve
from minidiff.errors import (MinidiffInputError, check_input_file, check_int, check_outputs,
                             check_run_folder, one_line)
from minidiff.nn.module import StateDictError
from minidiff.train.distributed import connect
from minidiff.train.lock import RunLock, check_run_lock
from minidiff.train.trainer import (Trainer, TrainingDiverged, check_resumable,
                                    resume_changes)

#: explicit flags -> config keys (each also settable with --set key=value)
FLAGS = {"steps": int, "batch_size": int, "lr": float, "base_channels": int, "seed": int,
         "ema_decay": float, "train_images": int}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None,
                        help=f"starting configuration: {', '.join(PRESETS)} (default quick; "
                        "with --resume, the run's own configuration)")
    parser.add_argument("--config", help="JSON file of key: value overriding the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value (JSON syntax), repeatable")
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"same as --set {name}=...")
    parser.add_argument("--out", help="run folder (default runs/PRESET); refused if it "
                        "already holds a run, unless --resume or --overwrite")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue exactly from CKPT (default OUT/checkpoint.npz)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its checkpoints, grids and "
                             "plots are deleted first)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (and checkpoint) at this step without changing the "
                             "schedule, e.g. to split a run in two")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the ranks of an MPI job (mpiexec -n N ...): "
                             "each rank takes batch_size/N images of every batch")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved configuration and exit")
    return parser


def _error(message, code: int = 2, quiet: bool = False) -> int:
    if not quiet:
        print("minidiff: " + one_line(message), file=sys.stderr)
    return code


#: what a run writes into its folder (what --overwrite deletes; nothing else is touched)
RUN_FILES = ("checkpoint.npz", "ema.npz", "config.json", "loss.png", "loss_by_t.png")
RUN_PREFIXES = ("samples_", "x0_pred_", ".tmp-")


def _clear_run(out: str) -> None:
    for name in os.listdir(out):
        if name in RUN_FILES or name.startswith(RUN_PREFIXES):
            os.remove(os.path.join(out, name))


def resume_command(out: str, checkpoint: str, ranks=None) -> str:
    """The command line that continues this run where it stopped."""
    words = ["minidiff"] + (["--backend", backend.get_backend()]
                            if backend.get_backend() != "numpy" else [])
    words += ["train", "--out", out, "--resume"]
    if os.path.abspath(checkpoint) != os.path.abspath(os.path.join(out, "checkpoint.npz")):
        words.append(checkpoint)
    if ranks:
        words = ["mpiexec", "-n", str(ranks.size)] + words + ["--distributed"]
    return " ".join(shlex.quote(word) for word in words)


def _on_rank_0(ranks, action):
    """``action()`` on rank 0 alone (on the only process without ranks), its result there and
    None elsewhere; a ``MinidiffInputError`` it raises is raised on every rank, so that the
    others stop with rank 0 instead of waiting for it at the next barrier."""
    result = refusal = None
    if ranks is None or ranks.is_main:
        try:
            result = action()
        except MinidiffInputError as error:
            refusal = error
    if ranks is not None:
        text = ranks.comm.bcast(None if refusal is None else one_line(refusal), root=0)
        refusal = refusal or (MinidiffInputError(text) if text else None)
    if refusal is not None:
        raise refusal
    return result


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    flags = {name: getattr(args, name) for name in FLAGS}
    preset = args.preset or "quick"
    out = args.out or os.path.join("runs", preset)
    ranks, quiet = None, False    # quiet: a rank other than 0, which leaves printing to rank 0
    lock = None                   # the folder's lock, held by rank 0 (minidiff.train.lock)
    say = print
    try:
        if args.distributed:
            ranks = connect()
            quiet = not ranks.is_main
            say = (lambda *a, **k: None) if quiet else print
        saved = None
        if args.resume:
            path = os.path.join(out, "checkpoint.npz") if args.resume == "auto" else args.resume
            check_input_file("--resume", path, hint="give the checkpoint.npz of the run to "
                             "continue (minidiff train --out RUN --resume)")
            saved = load_checkpoint(path)
            check_resumable(saved, path)
        # resuming: the run's own config, unless --preset says which run this is
        config = resolve(preset, args.config, args.set, flags,
                         base=saved["config"] if saved and not args.preset else None)
        changes = (resume_changes(saved["config"], config, path, saved["step"])
                   if saved else [])
        if args.stop_at is not None:
            check_int("--stop-at", args.stop_at, low=1, high=config["steps"])
        if args.show_config:
            say(json.dumps(config, indent=2, sort_keys=True))
            return 0
        note = lambda text: print(f"minidiff: {text}", file=sys.stderr)  # noqa: E731
        # refuse at once if another training holds the folder (rank 0 looks)
        _on_rank_0(ranks, lambda: check_run_lock("--out", out, note))
        check_run_folder("--out", out, resume=bool(args.resume), overwrite=args.overwrite)
        check_outputs({"--out": [os.path.join(out, name) for name in RUN_FILES]},
                      {"--config": args.config})
        # one training per folder: of two started at once, one refuses (rank 0 holds it)
        lock = _on_rank_0(ranks, lambda: RunLock(out, note=note))
        if ranks:
            ranks.part(config["batch_size"])      # refuse a batch the ranks cannot share
            ranks.barrier()                       # every rank has checked --out before any writes
        trainer = Trainer(config, out, log=lambda line: print(line, flush=True),
                          distributed=ranks)
        if args.resume:
            trainer.resume(path, saved)
            say(f"resumed from {path} at step {trainer.step}", flush=True)
            for change in changes:
                if change.startswith("steps "):
                    say(f"extending the run: {change} (the learning rate's cosine decay now "
                        f"ends at step {config['steps']})", flush=True)
                else:
                    say(f"changed on resume (bookkeeping only): {change}", flush=True)
        if not quiet:
            os.makedirs(out, exist_ok=True)
            if args.overwrite:
                _clear_run(out)
            with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as stream:
                json.dump(config, stream, indent=2, sort_keys=True)
        each = (f", {config['batch_size'] // ranks.size} on each of {ranks.size} ranks"
                if ranks else "")
        say(f"training {trainer.model.num_parameters():,} parameters for "
            f"{config['steps']} steps (batch {config['batch_size']}{each}) into {out}",
            flush=True)
        status = trainer.run(stop_at=args.stop_at)
    except StateDictError as error:
        return _error(f"the checkpoint does not fit the configured model: {error}")
    except CheckpointError as error:   # may be one rank's alone (e.g. no shared folder)
        return _error(error)
    except MinidiffInputError as error:   # ConfigError, MnistDataError, DistributedError...
        return _error(error, quiet=quiet)
    except TrainingDiverged as error:
        return _error(error, 1, quiet=quiet)
    except KeyboardInterrupt:
        return _error("interrupted before training started", 130, quiet=quiet)
    finally:
        if lock is not None:
            lock.release()
    if ranks:
        say(ranks.summary(), flush=True)
    if status == "interrupted":
        say(f"to continue: {resume_command(out, trainer.last_checkpoint, ranks)}", flush=True)
        return 130
    finished = "done" if trainer.step >= config["steps"] else "stopped"
    say(f"{finished}: {trainer.step}/{config['steps']} steps, final loss "
        f"{trainer.losses[-1]:.4f}; checkpoint {trainer.last_checkpoint}, EMA weights "
        f"{os.path.join(out, 'ema.npz')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
