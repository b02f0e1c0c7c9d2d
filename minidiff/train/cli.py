"""``minidiff train``: train the DDPM U-Net (or the autoencoder) on MNIST from a preset.

    minidiff train --preset quick                       # ~10 minutes on a CPU
    minidiff train --preset mnist --out runs/mnist      # the reference configuration
    minidiff train --preset ae-quick                    # the autoencoder of lesson 09
    minidiff train --preset quick --set lr=1e-3 --steps 2000 --config my.json
    minidiff train --out runs/quick --resume            # continue from runs/quick/checkpoint.npz

Writes into ``--out``: ``checkpoint.npz`` (model, EMA, AdamW, generator state, step,
config), ``config.json``, ``loss.png``, ``loss_by_t.png``, ``samples_*.png`` (EMA weights,
DDIM) and ``x0_pred_*.png``; for an autoencoder ``reconstructions_*.png`` (originals above,
reconstructions below), ``loss_rec.png``, ``loss_kl.png``, and the latent scale factor in both
checkpoint files.  Errors in the input end with one line ``minidiff: ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from minidiff.nn.module import StateDictError
from minidiff.spaces import SpaceError
from minidiff.train.checkpoint import CheckpointError, load_checkpoint
from minidiff.train.presets import PRESETS, ConfigError, resolve
from minidiff.train.trainer import Trainer, TrainingDiverged

#: explicit flags -> config keys (each also settable with --set key=value)
FLAGS = {"steps": int, "batch_size": int, "lr": float, "base_channels": int, "seed": int,
         "ema_decay": float, "train_images": int}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidiff train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick",
                        help=f"starting configuration: {', '.join(PRESETS)} (default quick)")
    parser.add_argument("--config", help="JSON file of key: value overriding the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value (JSON syntax), repeatable")
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"same as --set {name}=...")
    parser.add_argument("--out", help="run folder (default runs/PRESET)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue exactly from CKPT (default OUT/checkpoint.npz)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (and checkpoint) at this step without changing the "
                             "schedule, e.g. to split a run in two")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved configuration and exit")
    return parser


def _error(message: str, code: int = 2) -> int:
    print("minidiff: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    flags = {name: getattr(args, name) for name in FLAGS}
    out = args.out or os.path.join("runs", args.preset)
    try:
        base = None
        if args.resume:
            path = os.path.join(out, "checkpoint.npz") if args.resume == "auto" else args.resume
            base = load_checkpoint(path)["config"]
        config = resolve(args.preset, args.config, args.set, flags, base=base)
        if args.show_config:
            print(json.dumps(config, indent=2, sort_keys=True))
            return 0
        trainer = Trainer(config, out, log=lambda line: print(line, flush=True))
        if args.resume:
            trainer.resume(path)
            print(f"resumed from {path} at step {trainer.step}", flush=True)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as stream:
            json.dump(config, stream, indent=2, sort_keys=True)
        print(f"training {trainer.model.num_parameters():,} parameters for "
              f"{config['steps']} steps (batch {config['batch_size']}) into {out}", flush=True)
        status = trainer.run(stop_at=args.stop_at)
    except (ConfigError, CheckpointError, SpaceError) as error:
        return _error(error)
    except StateDictError as error:
        return _error(f"the checkpoint does not fit the configured model: {error}")
    except TrainingDiverged as error:
        return _error(error, 1)
    except KeyboardInterrupt:
        return _error("interrupted before training started", 130)
    if status == "interrupted":
        return 130
    finished = "done" if trainer.step >= config["steps"] else "stopped"
    print(f"{finished}: {trainer.step}/{config['steps']} steps, final loss "
          f"{trainer.losses[-1]:.4f}; checkpoint {trainer.last_checkpoint}, EMA weights "
          f"{os.path.join(out, 'ema.npz')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
