"""Every command, many bad inputs: each must end with exactly one line on stderr that names the
argument, a non-zero exit status, and no traceback, before any work is done.

The table is run in-process through ``minidiff.commands.main`` (fast), with stdout and stderr
captured.  Each case is ``(id, argv, names)``: ``names`` are the words one of which the error
line must contain (the argument, or the file it is about).  ``{ckpt}``, ``{out}`` ... in argv
are filled in from the fixture files built once for the module (``make_files``); ``{out}`` is
a fresh folder per case.

Run as a script (``python3 -m tests.test_bad_inputs``) it prints how each case ends:
one-line error / multi-line error / unnamed (one line, argument not named) / traceback /
silent (exit 0: the bad input was accepted), which is how the before/after counts of issue 15
were taken.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback

import pytest

from minidiff import backend, commands as cli

# A train command that finishes in seconds when nothing is wrong with it.
TRAIN = ["train", "--preset", "quick", "--out", "{out}", "--set", "base_channels=8",
         "--set", "channel_mults=[1,2]", "--set", "T=10", "--steps", "2", "--batch-size", "4",
         "--train-images", "16", "--set", "sample_every=0", "--set", "diag_every=0",
         "--set", "log_every=1", "--set", "checkpoint_every=0", "--set", "warmup_steps=1",
         "--set", "sample_steps=2"]
SAMPLE = ["sample", "--checkpoint", "{ckpt}", "--out", "{out}/grid.png", "--n", "2",
          "--steps", "2"]
EVAL = ["eval", "--checkpoint", "{ckpt}", "--n", "4", "--steps", "2", "--bpd-images", "0",
        "--no-floor", "--reference-images", "16", "--batch", "4", "--stats-dir", "{out}/stats",
        "--json"]
SAMPLE_TEXT = ["sample", "--checkpoint", "{text_ckpt}", "--out", "{out}/grid.png", "--n", "2",
               "--steps", "2"]
INPAINT = ["inpaint", "--checkpoint", "{ckpt}", "--image", "test:0", "--n", "2", "--steps", "2",
           "--out", "{out}/grid.png"]
DEMO = ["demo", "--steps", "1", "--out", "{out}"]
CLAIM = ["claim", "--checkpoints", "{export}", "{ckpt}", "--bpd-images", "2", "--mc-images", "2",
         "--n", "4", "--steps", "2", "--grid", "2", "--no-floor", "--reference-images", "16",
         "--stats-dir", "{out}/stats", "--out", "{out}/claim"]
BENCH_UNET = ["bench", "unet", "--no-torch", "--no-memory", "--repeat", "1", "--batch", "1",
              "--base-channels", "8"]
BENCH_LAYERS = ["bench", "layers", "--no-torch", "--repeat", "1", "--batch", "1"]
BENCH_LDM = ["bench", "ldm", "--no-torch", "--no-memory", "--repeat", "1", "--batch", "1",
             "--sample-batch", "1"]


def _train(*extra, names):
    return TRAIN + list(extra), names


def _sets(key, *values, names=None):
    return [(f"train-set-{key}={value}", *_train("--set", f"{key}={value}",
                                                  names=names or (key,)))
            for value in values]


def _flag(base, prefix, flag, values, names=None):
    return [(f"{prefix}{flag}={value}", base + [flag, str(value)], names or (flag,))
            for value in values]


CASES = [
    # ---------------------------------------------------------------- train: flags
    *_flag(TRAIN, "train", "--steps", ["0", "-5", "abc", "1.5"], ("steps",)),
    *_flag(TRAIN, "train", "--batch-size", ["0", "-1", "x", "17"], ("batch",)),
    *_flag(TRAIN, "train", "--lr", ["-1", "nan", "inf", "abc"], ("lr",)),
    *_flag(TRAIN, "train", "--base-channels", ["0", "-8", "7"], ("base_channels", "groups")),
    *_flag(TRAIN, "train", "--seed", ["-1", "abc"], ("seed",)),
    *_flag(TRAIN, "train", "--ema-decay", ["1.0", "1.5", "-0.1", "nan"], ("ema_decay",)),
    *_flag(TRAIN, "train", "--train-images", ["-1", "100000", "abc", "2"],
           ("train_images", "train-images", "batch")),
    *_flag(TRAIN, "train", "--stop-at", ["0", "-1", "99", "abc"], ("--stop-at",)),
    ("train-preset-unknown", TRAIN + ["--preset", "nonesuch"], ("preset",)),
    ("train-bogus-option", TRAIN + ["--bogus"], ("--bogus",)),
    # ---------------------------------------------------------------- train: --set values
    *_sets("groups", 3, 0, -2),
    *_sets("num_heads", 3, 0),
    *_sets("dropout", 1.0, -0.5, 2),
    *_sets("warmup_steps", -1),
    *_sets("min_lr", -1),
    *_sets("weight_decay", -1),
    *_sets("grad_clip", -1),
    *_sets("log_every", -1, 1.5),
    *_sets("sample_every", -1),
    *_sets("checkpoint_every", -1),
    *_sets("diag_every", -1),
    *_sets("sample_steps", 0, 11),
    *_sets("sampler", "euler", 3),
    *_sets("sample_count", 0, "true"),
    *_sets("image_size", 32, 0, 27),
    *_sets("patch_size", 0, 3, 1.5),
    *_sets("T", 0, -3, "abc", 2.5),
    *_sets("channel_mults", "[]", "[0]", "[1,-2]", "abc"),
    *_sets("num_res_blocks", -1),
    *_sets("attention_resolutions", "[5]"),
    *_sets("time_embed_dim", 0, 3),
    *_sets("objective", "nosuch", "hybrid"),
    *_sets("variance", "nosuch", "learned"),
    *_sets("t_sampler", "nosuch"),
    *_sets("vlb_weight", -1, "abc"),
    *_sets("min_snr_gamma", -1, "abc"),
    *_sets("prediction", "noise"),
    *_sets("schedule", "quadratic"),
    *_sets("num_res_blocks", "true"),
    *_sets("lr", '"fast"'),
    ("train-set-unknown-key", *_train("--set", "learning_rate=1", names=("learning_rate",))),
    ("train-set-no-equals", *_train("--set", "lr", names=("--set",))),
    ("train-set-empty-value", *_train("--set", "lr=", names=("--set",))),
    # ---------------------------------------------------------------- train: files and folders
    ("train-config-missing", *_train("--config", "{tmp}/missing.json", names=("config",))),
    ("train-config-folder", *_train("--config", "{tmp}", names=("config",))),
    ("train-config-not-json", *_train("--config", "{text}", names=("config", "JSON"))),
    ("train-config-list", *_train("--config", "{json_list}", names=("config", "object"))),
    ("train-config-bad-value", *_train("--config", "{json_bad_lr}", names=("lr",))),
    ("train-config-unknown-key", *_train("--config", "{json_unknown}", names=("nonesuch",))),
    ("train-out-is-file", *_train("--out", "{text}", names=("--out",))),
    ("train-out-under-file", *_train("--out", "{text}/run", names=("--out",))),
    ("train-out-holds-run", *_train("--out", "{run}", names=("--out", "--resume"))),
    ("train-resume-and-overwrite",
     *_train("--out", "{run}", "--resume", "--overwrite", names=("--resume", "--overwrite"))),
    ("train-resume-missing", *_train("--resume", "{tmp}/nope.npz", names=("nope.npz",))),
    ("train-resume-empty-folder", *_train("--resume", names=("checkpoint.npz", "--resume"))),
    ("train-resume-garbage", *_train("--resume", "{garbage}", names=("garbage.npz",))),
    ("train-resume-text", *_train("--resume", "{text}", names=("notes.txt",))),
    ("train-resume-export", *_train("--resume", "{export}", names=("EMA-only", "export"))),
    ("train-resume-nan", *_train("--resume", "{nan}", names=("NaN",))),
    ("train-resume-folder", *_train("--resume", "{tmp}", names=("--resume", "folder"))),
    ("train-resume-classifier",
     *_train("--resume", "{classifier}", names=("classifier.npz", "checkpoint"))),
    # ---------------------------------------------------------------- sample
    *_flag(SAMPLE, "sample", "--steps", ["0", "-1", "11", "abc"]),
    *_flag(SAMPLE, "sample", "--n", ["0", "-1", "abc"]),
    *_flag(SAMPLE, "sample", "--eta", ["-0.1", "1.5", "nan", "abc"]),
    *_flag(SAMPLE, "sample", "--seed", ["-1", "abc"]),
    *_flag(SAMPLE + ["--gif", "{out}/a.gif"], "sample", "--frames", ["0", "-1", "x"]),
    *_flag(SAMPLE, "sample", "--out", ["{out}/grid.txt", "{out}/grid", "{tmp}", "{text}/g.png"]),
    *_flag(SAMPLE, "sample", "--gif", ["{out}/a.png", "{out}/anim", "{tmp}", "{text}/a.gif"]),
    *_flag(SAMPLE, "sample", "--strip", ["{out}/s.gif", "{text}/s.png", "{tmp}"]),
    *_flag(SAMPLE, "sample", "--sampler", ["euler"]),
    ("sample-checkpoint-missing", SAMPLE + ["--checkpoint", "{tmp}/nope.npz"], ("nope.npz",)),
    ("sample-checkpoint-garbage", SAMPLE + ["--checkpoint", "{garbage}"], ("garbage.npz",)),
    ("sample-checkpoint-text", SAMPLE + ["--checkpoint", "{text}"], ("notes.txt",)),
    ("sample-checkpoint-folder", SAMPLE + ["--checkpoint", "{tmp}"], ("--checkpoint",)),
    ("sample-checkpoint-nan", SAMPLE + ["--checkpoint", "{nan}"], ("NaN",)),
    ("sample-checkpoint-classifier", SAMPLE + ["--checkpoint", "{classifier}"],
     ("classifier.npz",)),
    ("sample-raw-from-export", SAMPLE + ["--checkpoint", "{export}", "--raw"],
     ("--raw", "EMA-only")),
    ("sample-no-checkpoint", ["sample", "--out", "{out}/g.png"], ("--checkpoint",)),
    ("sample-bogus-option", SAMPLE + ["--bogus"], ("--bogus",)),
    # ---------------------------------------------------------------- sample: conditioning
    ("sample-prompt-unknown-word", SAMPLE_TEXT + ["--prompt", "a fat seven"],
     ("--prompt", "fat")),
    ("sample-prompt-too-long", SAMPLE_TEXT + ["--prompt", "a a a a a a a a seven"],
     ("--prompt", "max_tokens")),
    ("sample-prompt-unconditioned", SAMPLE + ["--prompt", "seven"], ("--prompt",)),
    ("sample-guidance-unconditioned", SAMPLE + ["--guidance", "3"], ("--guidance",)),
    ("sample-guidance-without-prompt", SAMPLE_TEXT + ["--guidance", "3"], ("--guidance",)),
    *_flag(SAMPLE_TEXT + ["--prompt", "seven"], "sample-text", "--guidance",
           ["-1", "nan", "abc"]),
    *_sets("conditioning", "text", "crossattn,concat"),
    *_sets("caption_dropout", "-0.1", "1.5"),
    *_sets("mask_all_fraction", "2"),
    *_sets("guidance", "-1"),
    *_sets("image_guidance", "-1"),
    *_sets("context_dim", "0"),
    ("train-set-text_heads=3", *_train("--set", "conditioning=crossattn", "--set",
                                       "text_heads=3", names=("text_heads",))),
    # ---------------------------------------------------------------- eval
    *_flag(EVAL, "eval", "--n", ["1", "0", "-5", "abc"]),
    *_flag(EVAL, "eval", "--steps", ["-1", "11", "abc"]),
    *_flag(EVAL, "eval", "--eta", ["-1", "2", "nan"]),
    *_flag(EVAL, "eval", "--batch", ["0", "-1"]),
    *_flag(EVAL, "eval", "--seed", ["-1"]),
    *_flag(EVAL, "eval", "--bpd-images", ["-1", "20000"]),
    *_flag(EVAL, "eval", "--bpd-samples", ["0", "-1"]),
    *_flag(EVAL, "eval", "--reference-images", ["1", "0", "-1", "20000"]),
    *_flag(EVAL, "eval", "--sampler", ["euler"]),
    *_flag(EVAL, "eval", "--classifier", ["{tmp}/nope.npz", "{garbage}", "{ckpt}", "{tmp}"],
           ("--classifier", "classifier")),
    ("eval-stats-dir-is-file", EVAL + ["--stats-dir", "{text}"], ("--stats-dir",)),
    ("eval-checkpoint-missing", EVAL + ["--checkpoint", "{tmp}/nope.npz"], ("nope.npz",)),
    ("eval-checkpoint-garbage", EVAL + ["--checkpoint", "{garbage}"], ("garbage.npz",)),
    ("eval-checkpoint-folder", EVAL + ["--checkpoint", "{tmp}"], ("--checkpoint",)),
    ("eval-checkpoint-nan", EVAL + ["--checkpoint", "{nan}"], ("NaN",)),
    ("eval-raw-from-export", EVAL + ["--checkpoint", "{export}", "--raw-weights"],
     ("--raw-weights", "EMA-only")),
    ("eval-bogus-option", EVAL + ["--bogus"], ("--bogus",)),
    # ---------------------------------------------------------------- claim
    *_flag(CLAIM, "claim", "--bpd-images", ["1", "-1", "20000", "abc"]),
    *_flag(CLAIM, "claim", "--mc-images", ["1", "0"]),
    *_flag(CLAIM, "claim", "--bpd-samples", ["0", "-1"]),
    *_flag(CLAIM, "claim", "--n", ["1", "0"]),
    *_flag(CLAIM, "claim", "--steps", ["0", "11", "abc"]),
    *_flag(CLAIM, "claim", "--grid", ["0", "65"]),
    *_flag(CLAIM, "claim", "--batch", ["0"]),
    *_flag(CLAIM, "claim", "--seed", ["-1"]),
    *_flag(CLAIM, "claim", "--out", ["{text}"]),
    *_flag(CLAIM, "claim", "--stats-dir", ["{text}"]),
    *_flag(CLAIM, "claim", "--classifier", ["{tmp}/nope.npz"], ("--classifier",)),
    *_flag(CLAIM, "claim", "--checkpoints", ["{tmp}/nope.npz", "{tmp}"], ("--checkpoints",)),
    ("claim-checkpoints-garbage", CLAIM + ["--checkpoints", "{garbage}"], ("garbage.npz",)),
    ("claim-checkpoints-nan", CLAIM + ["--checkpoints", "{export}", "{nan}"], ("NaN",)),
    ("claim-checkpoints-autoencoder", CLAIM + ["--checkpoints", "data/checkpoints/ae.npz"],
     ("--checkpoints",)),
    ("claim-checkpoints-latent", CLAIM + ["--checkpoints", "data/checkpoints/ldm.npz"],
     ("--checkpoints",)),
    ("claim-checkpoints-none", CLAIM + ["--checkpoints"], ("--checkpoints",)),
    ("claim-bogus-option", CLAIM + ["--bogus"], ("--bogus",)),
    # ---------------------------------------------------------------- demo
    *_flag(DEMO, "demo", "--steps", ["0", "-1", "abc"]),
    *_flag(DEMO, "demo", "--batch", ["0", "-1", "100000"]),
    *_flag(DEMO, "demo", "--seed", ["-1"]),
    *_flag(DEMO, "demo", "--out", ["{text}", "{text}/sub"]),
    ("demo-bogus-option", DEMO + ["--bogus"], ("--bogus",)),
    # ---------------------------------------------------------------- bench
    ("bench-nothing", ["bench"], ("layers", "unet")),
    *_flag(BENCH_LDM, "bench-ldm", "--repeat", ["0"]),
    *_flag(BENCH_LDM, "bench-ldm", "--sample-batch", ["0"]),
    *_flag(BENCH_LDM, "bench-ldm", "--pixel", ["{tmp}/nope.npz", "{garbage}"],
           names=("nope.npz", "garbage.npz")),
    *_flag(BENCH_LDM, "bench-ldm", "--ldm", ["{tmp}/nope.npz", "{text}"],
           names=("nope.npz", "notes.txt")),
    ("sample-autoencoder-for-a-pixel-model", SAMPLE + ["--autoencoder", "{ckpt}"],
     ("--autoencoder",)),
    ("train-ae-steps-0", ["train-ae", "--out", "{out}", "--steps", "0"], ("steps",)),
    ("bench-unknown", ["bench", "nonesuch"], ("nonesuch",)),
    *_flag(BENCH_LAYERS, "bench-layers", "--repeat", ["0", "abc"]),
    *_flag(BENCH_LAYERS, "bench-layers", "--batch", ["0"]),
    *_flag(BENCH_LAYERS, "bench-layers", "--threads", ["0"]),
    *_flag(BENCH_UNET, "bench-unet", "--repeat", ["0", "-1"]),
    ("bench-unet-preset-conditioned", BENCH_UNET[:-2] + ["--preset", "txt2img-quick"],
     ("--preset", "txt2img-quick")),
    ("bench-unet-preset-and-width", BENCH_UNET + ["--preset", "quick"], ("--preset",)),
    *_flag(BENCH_UNET, "bench-unet", "--batch", ["-1"]),
    *_flag(BENCH_UNET, "bench-unet", "--threads", ["0"]),
    *_flag(BENCH_UNET, "bench-unet", "--base-channels", ["0", "7"], ("--base-channels",)),
    *_flag(BENCH_UNET, "bench-unet", "--image-size", ["0", "30"], ("--image-size",)),
    # ---------------------------------------------------------------- inpaint
    *_flag(INPAINT, "inpaint", "--mask", ["box:0,0,40,40", "box:5,5,2,2", "middle", "box:1,2",
                                          "{tmp}/nope.png"]),
    *_flag(INPAINT, "inpaint", "--image", ["test:abc", "train:3", "test:", "test:5-2",
                                           "test:10000", "test:0-10000", "{tmp}/nope.png",
                                           "{png32}", "{text}"]),
    *_flag(INPAINT, "inpaint", "--n", ["0", "abc"]),
    *_flag(INPAINT, "inpaint", "--steps", ["0", "11"]),
    *_flag(INPAINT, "inpaint", "--out", ["{out}/grid.txt", "{tmp}"]),
    *_flag(INPAINT, "inpaint", "--method", ["concat", "paint"]),
    *_flag(INPAINT, "inpaint", "--prompt", ["a seven"]),
    *_flag(INPAINT, "inpaint", "--guidance", ["3", "-1"]),
    ("inpaint-checkpoint-missing", INPAINT + ["--checkpoint", "{tmp}/nope.npz"], ("nope.npz",)),
    ("inpaint-checkpoint-autoencoder", INPAINT + ["--checkpoint", "{autoencoder}"],
     ("ae.npz", "autoencoder")),
    ("inpaint-autoencoder-for-a-pixel-model", INPAINT + ["--autoencoder", "{ckpt}"],
     ("--autoencoder",)),
    ("inpaint-no-image", INPAINT[:3] + ["--out", "{out}/g.png"], ("--image",)),
    ("eval-inpainting-n-0", EVAL + ["--inpainting", "--n", "0"], ("--n",)),
    ("eval-inpainting-mask", EVAL + ["--inpainting", "--mask", "middle"], ("--mask",)),
    ("eval-inpainting-method", EVAL + ["--inpainting", "--method", "concat"], ("--method",)),
    # ---------------------------------------------------------------- the dispatcher
    ("cli-unknown-command", ["nonesuch"], ("nonesuch",)),
    ("cli-no-command", [], ("COMMAND", "command")),
    ("cli-unknown-backend", ["--backend", "jax", "demo"], ("--backend",)),
    # ------------------------------------------------------------ issue 24, part A
    # an output never replaces an input, nor another output
    ("sample-out-is-checkpoint", SAMPLE + ["--checkpoint", "{ckpt_copy}", "--out",
                                           "{ckpt_copy}"], ("--out", "--checkpoint")),
    ("sample-strip-is-out", SAMPLE + ["--strip", "{out}/grid.png"], ("--strip", "--out")),
    ("sample-out-is-autoencoder", ["sample", "--checkpoint", "data/checkpoints/ldm.npz",
                                   "--autoencoder", "{ae_copy}", "--out", "{ae_copy}", "--n",
                                   "1", "--steps", "1"], ("--out", "--autoencoder")),
    ("sample-out-is-the-recorded-autoencoder", SAMPLE + ["--checkpoint", "{ldm_copy}", "--out",
                                                         "{ae_copy}"], ("--out", "autoencoder")),
    ("inpaint-out-is-image", INPAINT + ["--image", "{png28}", "--out", "{png28}"],
     ("--out", "--image")),
    ("inpaint-out-is-mask", INPAINT + ["--mask", "{png28}", "--out", "{png28}"],
     ("--out", "--mask")),
    ("inpaint-out-is-checkpoint", INPAINT + ["--checkpoint", "{ckpt_copy}", "--out",
                                             "{ckpt_copy}"], ("--out", "--checkpoint")),
    ("claim-out-holds-a-checkpoint", CLAIM + ["--checkpoints", "{claim_out}/claim_samples.png",
                                              "--out", "{claim_out}"], ("--out",)),
    ("train-config-is-the-runs-record", *_train("--out", "{run_copy}", "--overwrite", "--config",
                                                "{run_copy}/config.json", names=("--config",))),
    # counts the machine cannot hold (or finish) are refused before any work
    ("sample-n-1e9", SAMPLE + ["--n", "1000000000"], ("--n",)),
    ("sample-n-float", SAMPLE + ["--n", "1e9"], ("--n",)),
    ("sample-gif-n-1e8", SAMPLE + ["--n", "100000000", "--gif", "{out}/a.gif"], ("--n",)),
    ("sample-two-prompts-n-1e9", SAMPLE_TEXT + ["--prompt", "seven", "--prompt", "two", "--n",
                                                "1000000000"], ("--n", "--prompt")),
    ("inpaint-n-1e9", INPAINT + ["--n", "1000000000"], ("--n",)),
    ("inpaint-many-images-times-n", INPAINT + ["--image", "test:0-9999", "--n", "100000"],
     ("--n", "--image")),
    ("eval-n-1e9", EVAL + ["--n", "1000000000"], ("--n",)),
    ("eval-per-prompt-1e9", EVAL + ["--checkpoint", "{text_ckpt}", "--prompts",
                                    "--per-prompt", "1000000000"], ("--per-prompt",)),
    ("claim-n-1e9", CLAIM + ["--n", "1000000000"], ("--n",)),
    # tracebacks and unusable messages
    ("sample-config-not-json", SAMPLE + ["--checkpoint", "{config_not_json}"],
     ("config_not_json.npz", "JSON")),
    ("eval-text-model-without-caption-stats", EVAL + ["--checkpoint", "{no_captions}",
                                                      "--prompts"], ("no_captions.npz",)),
    ("eval-stats-dir-read-only", EVAL + ["--stats-dir", "{readonly}/stats"], ("--stats-dir",)),
    ("claim-stats-dir-read-only", CLAIM + ["--stats-dir", "{readonly}/stats"],
     ("--stats-dir",)),
    ("claim-out-read-only", CLAIM + ["--out", "{readonly}/claim"], ("--out",)),
    ("eval-text-model-without-prompts", EVAL + ["--checkpoint", "{text_ckpt}"],
     ("--prompts",)),
    ("sample-prompt-30000-characters", SAMPLE_TEXT + ["--prompt", "seven " * 5000],
     ("--prompt",)),
    ("sample-guidance-1e300", SAMPLE_TEXT + ["--prompt", "seven", "--guidance", "1e300"],
     ("--guidance",)),
    ("inpaint-guidance-1e300", INPAINT + ["--checkpoint", "{text_ckpt}", "--prompt", "seven",
                                          "--guidance", "1e300"], ("--guidance",)),
    ("eval-guidance-1e300", EVAL + ["--checkpoint", "{text_ckpt}", "--prompts", "--guidance",
                                    "1e300"], ("--guidance",)),
    ("train-set-guidance=1e300", *_train("--set", "guidance=1e300", names=("guidance",))),
    ("eval-mask-without-inpainting", EVAL + ["--mask", "top"], ("--mask", "--inpainting")),
    ("eval-method-without-inpainting", EVAL + ["--method", "replace"],
     ("--method", "--inpainting")),
    ("eval-bpd-full-latent", EVAL + ["--checkpoint", "data/checkpoints/ldm.npz", "--bpd-full"],
     ("--bpd-full",)),
    ("sample-minidiff-data-searched-alone", ["MINIDIFF_DATA={tmp}"] + SAMPLE + [
        "--checkpoint", "data/checkpoints/nonesuch.npz"], ("MINIDIFF_DATA",)),
    # issue 24, part B
    ("train-resume-changed-config", ["train", "--out", "{run}", "--resume", "--set", "lr=0.5",
                                     "--set", "batch_size=8"], ("lr 0.001 -> 0.5",)),
    ("train-resume-other-preset", ["train", "--out", "{run}", "--resume", "--preset", "mnist"],
     ("base_channels 8 -> 32",)),
    ("train-resume-changed-flag", ["train", "--out", "{run}", "--resume", "--ema-decay", "0.5"],
     ("ema_decay",)),
    ("train-folder-in-use", TRAIN + ["--out", "{locked}"], ("in use by another training",)),
    ("sample-prompt-two-digits", SAMPLE_TEXT + ["--prompt", "seven three"],
     ("--prompt 'seven three': names 2 digits",)),
    ("sample-prompt-two-numerals", SAMPLE_TEXT + ["--prompt", "a 7 3"], ("names 2 digits",)),
    ("sample-prompt-thick-thin", SAMPLE_TEXT + ["--prompt", "a thick thin seven"],
     ("is both thin and thick",)),
    ("sample-prompt-upright-slanted", SAMPLE_TEXT + ["--prompt", "an upright slanted seven"],
     ("is both upright and slanted",)),
    ("inpaint-prompt-two-digits", ["inpaint", "--checkpoint", "data/checkpoints/txt2img.npz",
                                   "--image", "test:0", "--n", "1", "--steps", "2", "--prompt",
                                   "seven three", "--out", "{out}/g.png"],
     ("--prompt", "names 2 digits")),
    ("sample-checkpoint-config-edited", SAMPLE + ["--checkpoint", "{edited}"],
     ("edited.npz: its config was edited",)),
    ("eval-checkpoint-config-edited", EVAL + ["--checkpoint", "{edited}"], ("T 10 -> 5",)),
    ("sample-checkpoint-data-missing", SAMPLE + ["--checkpoint", "data/checkpoints/nope.npz"],
     ("looked in",)),
    ("eval-classifier-data-missing", EVAL + ["--classifier", "data/checkpoints/nope.npz"],
     ("--classifier: no such file: data/checkpoints/nope.npz; looked in",)),
    ("claim-checkpoints-data-missing", CLAIM + ["--checkpoints", "data/checkpoints/nope.npz"],
     ("--checkpoints: no such file: data/checkpoints/nope.npz; looked in",)),
    ("bench-ldm-pixel-data-missing", BENCH_LDM + ["--pixel", "data/checkpoints/nope.npz"],
     ("--pixel: no such file: data/checkpoints/nope.npz; looked in",)),
    ("bench-ldm-figures-data-missing", BENCH_LDM + ["--figures", "data/checkpoints/nope.json"],
     ("--figures: no such file: data/checkpoints/nope.json; looked in",)),
]

IDS = [case[0] for case in CASES]
assert len(IDS) == len(set(IDS)), "duplicate case ids"


# ----------------------------------------------------------------------------- fixture files

def make_files(folder: str) -> dict:
    """The files the cases point at: a tiny run (full checkpoint + EMA export), a checkpoint
    with a NaN weight, random bytes named .npz, a text file, JSON configs."""
    from minidiff.config.presets import resolve
    from minidiff.train.trainer import Trainer
    os.makedirs(folder, exist_ok=True)
    host = backend.host
    config = resolve("quick", sets=["base_channels=8", "channel_mults=[1,2]", "T=10",
                                    "sample_every=0", "diag_every=0", "log_every=0",
                                    "checkpoint_every=0", "warmup_steps=1", "sample_steps=2"],
                     overrides={"steps": 1, "batch_size": 4})
    images = host.random.default_rng(0).integers(0, 256, (8, 1, 28, 28)).astype(host.uint8)
    run = os.path.join(folder, "run")
    Trainer(config, run, images=images, log=lambda line: None).run()
    files = {"tmp": folder, "run": run, "ckpt": os.path.join(run, "checkpoint.npz"),
             "export": os.path.join(run, "ema.npz")}
    text_run = os.path.join(folder, "text_run")     # a text-conditioned model (lesson 11)
    Trainer({**config, "conditioning": "crossattn", "context_dim": 8, "text_heads": 2,
             "text_layers": 1}, text_run, images=images, labels=host.arange(8) % 10,
            log=lambda line: None).run()
    files["text_ckpt"] = os.path.join(text_run, "ema.npz")
    arrays = backend.load_npz(files["ckpt"])
    key = next(k for k in arrays if k.startswith("ema.") and k.endswith("weight"))
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = host.nan
    files["nan"] = os.path.join(folder, "nan.npz")
    backend.save_npz(files["nan"], arrays)
    files["garbage"] = os.path.join(folder, "garbage.npz")
    with open(files["garbage"], "wb") as stream:
        stream.write(host.random.default_rng(1).bytes(4096))
    files["text"] = os.path.join(folder, "notes.txt")
    with open(files["text"], "w", encoding="utf-8") as stream:
        stream.write("not a checkpoint\n")
    for name, content in {"json_list": [1, 2], "json_bad_lr": {"lr": -1.0},
                          "json_unknown": {"nonesuch": 1}}.items():
        files[name] = os.path.join(folder, name + ".json")
        with open(files[name], "w", encoding="utf-8") as stream:
            json.dump(content, stream)
    from minidiff.evaluate.classifier import DEFAULT_PATH
    files["classifier"] = DEFAULT_PATH
    files["autoencoder"] = os.path.join(os.path.dirname(DEFAULT_PATH), "ae.npz")
    from PIL import Image
    files["png32"] = os.path.join(folder, "digit32.png")
    Image.fromarray(host.zeros((32, 32), host.uint8)).save(files["png32"])
    # issue 24, part A: inputs an output might replace (copies, as a failing case would
    # overwrite them), damaged checkpoints, a folder nobody may write in
    files["png28"] = os.path.join(folder, "digit28.png")
    Image.fromarray(host.zeros((28, 28), host.uint8)).save(files["png28"])
    files["ckpt_copy"] = os.path.join(folder, "copy.npz")
    shutil.copyfile(files["ckpt"], files["ckpt_copy"])
    files["ae_copy"] = os.path.join(folder, "ae_copy.npz")
    shutil.copyfile(files["autoencoder"], files["ae_copy"])
    arrays = backend.load_npz(os.path.join(os.path.dirname(DEFAULT_PATH), "ldm.npz"))
    config = {**json.loads(str(arrays["config"])), "autoencoder": files["ae_copy"]}
    files["ldm_copy"] = os.path.join(folder, "ldm_copy.npz")    # records ae_copy.npz
    backend.save_npz(files["ldm_copy"], {**arrays, "config": host.asarray(json.dumps(config))})
    files["run_copy"] = os.path.join(folder, "run_copy")
    shutil.copytree(run, files["run_copy"])
    with open(os.path.join(files["run_copy"], "config.json"), "w", encoding="utf-8") as stream:
        json.dump({"lr": 1e-3}, stream)
    files["claim_out"] = os.path.join(folder, "claim_out")
    os.makedirs(files["claim_out"])
    shutil.copyfile(files["export"], os.path.join(files["claim_out"], "claim_samples.png"))
    arrays = backend.load_npz(files["export"])
    files["config_not_json"] = os.path.join(folder, "config_not_json.npz")
    backend.save_npz(files["config_not_json"], {**arrays, "config": host.asarray("{lr: 1")})
    arrays = backend.load_npz(files["text_ckpt"])
    files["no_captions"] = os.path.join(folder, "no_captions.npz")
    backend.save_npz(files["no_captions"], {k: v for k, v in arrays.items()
                                            if not k.startswith("captions.")})
    files["readonly"] = os.path.join(folder, "readonly")
    os.makedirs(files["readonly"])
    os.chmod(files["readonly"], 0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:    # root writes anywhere but in /proc
        files["readonly"] = "/proc/minidiff-readonly"
    # issue 24, part B: a run folder another (live) process holds; a checkpoint whose config
    # was edited after saving in what its weights were trained for (T, prediction)
    files["locked"] = os.path.join(folder, "locked")
    os.makedirs(files["locked"])
    with open(os.path.join(files["locked"], ".lock"), "w", encoding="ascii") as stream:
        stream.write(f"{os.getpid()}\n")
    edited = backend.load_npz(files["export"])
    edited["config"] = host.asarray(json.dumps({**json.loads(str(edited["config"])), "T": 5,
                                                "prediction": "eps"}, sort_keys=True))
    files["edited"] = os.path.join(folder, "edited.npz")
    backend.save_npz(files["edited"], edited)
    return files


def fill(argv, files: dict, out: str) -> list:
    return [arg.format(out=out, **files) for arg in argv]


# ----------------------------------------------------------------------------- running a case

def run_case(argv) -> tuple:
    """``(status, stdout, stderr, traceback or None)`` of ``minidiff ARGV`` in this process;
    leading ``NAME=value`` words of ARGV are set in the environment for the run."""
    out, err = io.StringIO(), io.StringIO()
    trace = None
    saved = (backend.get_backend(), backend.default_dtype(), backend.get_rng_state())
    argv = list(argv)
    environment = {}
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        name, value = argv.pop(0).split("=", 1)
        environment[name] = value
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            _environment(environment):
        try:
            status = cli.main(list(argv))
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # noqa: BLE001  (a traceback is one of the outcomes we count)
            status, trace = None, traceback.format_exc()
    backend.set_backend(saved[0])
    backend.set_default_dtype(saved[1])
    backend.set_rng_state(saved[2])
    return status, out.getvalue(), err.getvalue(), trace


@contextlib.contextmanager
def _environment(variables: dict):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: the longest error line a reader is asked to read (a user's value is shortened in it)
LONGEST_LINE = 1000


def outcome(result, names) -> str:
    status, _, err, trace = result
    if trace is not None or "Traceback" in err:
        return "traceback"
    if status == 0:
        return "silent"
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1:
        return "multi-line"
    if len(lines[0]) > LONGEST_LINE:
        return "too-long"
    if not any(name.lower() in lines[0].lower() for name in names):
        return "unnamed"
    return "one-line"


# ----------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    saved = backend.get_rng_state()
    made = make_files(str(tmp_path_factory.mktemp("bad_inputs")))
    backend.set_rng_state(saved)
    return made


@pytest.mark.parametrize("case_id, argv, names", CASES, ids=IDS)
def test_bad_input_is_one_named_line(case_id, argv, names, files, tmp_path):
    result = run_case(fill(argv, files, str(tmp_path / "out")))
    status, _, err, trace = result
    assert outcome(result, names) == "one-line", (
        f"status {status}; stderr:\n{err}\n{trace or ''}")
    assert status not in (0, None)


def test_the_table_is_wide():
    commands = {argv[0] if argv else "" for _, argv, _ in CASES}
    assert {"train", "sample", "eval", "demo", "bench", "inpaint"} <= commands
    assert len(CASES) >= 150


def test_every_fixture_file_case_runs_clean_when_nothing_is_wrong(files, tmp_path):
    """The base commands of the table succeed, so each case fails for its own bad input."""
    for argv in (SAMPLE, EVAL, SAMPLE_TEXT + ["--prompt", "seven"], INPAINT):
        result = run_case(fill(argv, files, str(tmp_path / argv[0])))
        assert result[0] == 0, result[2] + (result[3] or "")


@pytest.mark.parametrize("where, argv", [
    ("minidiff.commands.sample.sample_images", SAMPLE),
    ("minidiff.evaluate.model.sample_images", EVAL),
    ("minidiff.commands.inpaint.complete", INPAINT),
    ("minidiff.commands.claim.claim", CLAIM),
    ("minidiff.commands.demo.run", DEMO),
    ("minidiff.bench.layers.run", BENCH_LAYERS)])
def test_ctrl_c_is_one_line_and_status_130(where, argv, files, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a command: one line, exit status 130, no temporary file left
    (a cache written whole before it, eval's test-set statistics, may stay)."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    module, _, name = where.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, interrupt)
    out = tmp_path / "out"
    status, _, err, trace = run_case(fill(argv, files, str(out)))
    assert status == 130 and trace is None, err + (trace or "")
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    assert not (out / "grid.png").exists()


def test_writes_are_whole_or_nothing(tmp_path, monkeypatch):
    """Ctrl-C while a grid is being written leaves the old file and no temporary one."""
    from minidiff.data import images
    path = tmp_path / "grid.png"
    path.write_bytes(b"the old grid")
    digits = backend.host.zeros((4, 1, 28, 28), backend.host.uint8)

    def interrupted_save(self, target, *args, **kwargs):
        with open(target, "wb") as stream:
            stream.write(b"half a PNG")
        raise KeyboardInterrupt
    monkeypatch.setattr("PIL.Image.Image.save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        images.save_grid(digits, str(path))
    assert path.read_bytes() == b"the old grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_a_job_longer_than_a_week_stops_at_its_first_progress_line():
    """The time rule (``progress.LONGEST_JOB``): judged once, on the measured rate."""
    from minidiff.errors import MinidiffInputError, one_line
    from minidiff.progress import LONGEST_JOB, Progress
    stream = io.StringIO()
    progress = Progress("sampling 10 images (ddim)", stream, every=0.0)
    progress.start -= 2.0                      # 1 step took 2 s
    with pytest.raises(MinidiffInputError) as caught:
        progress(1, LONGEST_JOB)               # about 2 weeks
    assert "more than a week" in one_line(caught.value) and not stream.getvalue()
    progress = Progress("sampling 10 images (ddim)", stream, every=0.0)
    progress.start -= 2.0
    progress(1, LONGEST_JOB // 4)              # about 3.5 days: goes on
    progress(2, LONGEST_JOB)                   # judged once only, at the first line
    assert len(stream.getvalue().splitlines()) == 2


def test_help_lists_every_preset():
    from minidiff.config.presets import PRESETS
    status, out, _, _ = run_case(["--help"])
    assert status == 0
    assert all(name in out for name in PRESETS), out


def test_unknown_backend_in_the_environment_is_one_line():
    """MINIDIFF_BACKEND is read at import: a bad value must not break ``import minidiff``, and
    the command says what is wrong in one line."""
    env = {**os.environ, "MINIDIFF_BACKEND": "jax"}
    imported = subprocess.run([sys.executable, "-c", "import minidiff"], env=env,
                              capture_output=True, text=True)
    assert imported.returncode == 0 and "Traceback" not in imported.stderr
    command = subprocess.run([sys.executable, "-m", "minidiff", "bench", "nonesuch"], env=env,
                             capture_output=True, text=True)
    assert command.returncode == 2 and "Traceback" not in command.stderr
    assert len(command.stderr.strip().splitlines()) == 1
    assert "MINIDIFF_BACKEND" in command.stderr


# ----------------------------------------------------------------------------- as a script

def _count(timeout: int = 120) -> None:
    import collections
    import tempfile

    def alarm(signum, frame):
        raise TimeoutError("case took too long")
    signal.signal(signal.SIGALRM, alarm)
    counts, rows = collections.Counter(), []
    with tempfile.TemporaryDirectory() as folder:
        made = make_files(os.path.join(folder, "files"))
        for case_id, argv, names in CASES:
            signal.alarm(timeout)
            try:
                result = run_case(fill(argv, made, os.path.join(folder, "out", case_id)))
            except TimeoutError:
                result = (0, "", "", None)
            signal.alarm(0)
            kind = outcome(result, names)
            counts[kind] += 1
            first = (result[3] or result[2]).strip().splitlines()
            rows.append(f"{kind:11s} {case_id:40s} {first[-1][:110] if first else ''}")
    print("\n".join(rows))
    print(f"{len(CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


if __name__ == "__main__":
    _count()
