"""A model names the sampler its samples are drawn with (config ``sampler``, ``sample_steps``):
``minidiff sample``, ``eval`` (FID, ``--inpainting``, ``--prompts``) and ``inpaint`` use it
when ``--sampler`` / ``--steps`` are left out, an explicit flag wins, the trainer's grids draw
with it, and a file written before the key existed loads as DDIM with 50 steps (what the
commands used before).

What is drawn is seen where it happens: ``run_sampler``, which every sampling loop calls
(``pipelines.sample``), is wrapped to record the sampler and the step count it was given; the
figures' JSON must name the same."""
import json
import os

import pytest

from minidiff import backend
from minidiff.checkpoint import load_checkpoint, save_checkpoint
from minidiff.commands import eval as eval_cli, inpaint as inpaint_cli, sample as sample_cli
from minidiff.commands import main as minidiff_main
from minidiff.config.build import build_model
from minidiff.config.checks import ConfigError, check_config
from minidiff.config.presets import DEFAULTS, resolve
from minidiff.data.captions import CaptionStats
from minidiff.evaluate.classifier import DEFAULT_PATH
from minidiff.optim import EMA
from minidiff.pipelines import sample as sample_module
from minidiff.pipelines.load import model_sampler
from minidiff.train.trainer import Trainer, resume_changes

#: a tiny 28x28 U-Net (the classifier of eval reads 28x28 digits), T = 20
TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "groups": 4, "time_embed_dim": 16, "T": 20,
        "sample_count": 2}
#: the model's own sampler: neither the old default (DDIM, 50 steps capped at T = 20) nor
#: the DDPM default (all T)
OWN = {"sampler": "ddpm", "sample_steps": 7}


def _save(path, config, extra=None):
    backend.manual_seed(0)
    model = build_model(config)
    save_checkpoint(path, model=model, ema=EMA(model), config=config, step=1, ema_only=True,
                    extra=extra)
    return str(path)


@pytest.fixture
def own(tmp_path):
    """An untrained tiny model whose config says: draw with DDPM in 7 steps."""
    return _save(tmp_path / "own.npz", resolve("quick", overrides={**TINY, **OWN}))


@pytest.fixture
def drawn(monkeypatch):
    """``[(sampler, steps), ...]``, one per run of the sampler."""
    calls, real = [], sample_module.run_sampler

    def spy(sampler, eps_model, schedule, shape, steps=None, **options):
        calls.append((sampler, steps))
        return real(sampler, eps_model, schedule, shape, steps, **options)
    monkeypatch.setattr(sample_module, "run_sampler", spy)
    return calls


def _eval_json(capsys, checkpoint, tmp_path, *extra):
    argv = ["--checkpoint", checkpoint, "--n", "4", "--batch", "4", "--bpd-images", "0",
            "--no-floor", "--reference-images", "16", "--classifier", DEFAULT_PATH,
            "--stats-dir", str(tmp_path / "stats"), "--json", *extra]
    capsys.readouterr()
    assert eval_cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------ the rule
def test_model_sampler_takes_each_flag_left_out_from_the_config():
    config = {**DEFAULTS, **OWN, "T": 20}
    assert model_sampler(config) == ("ddpm", 7)
    assert model_sampler(config, "ddim") == ("ddim", 7)        # each flag on its own
    assert model_sampler(config, steps=3) == ("ddpm", 3)
    assert model_sampler(config, "ddim", 3) == ("ddim", 3)
    assert model_sampler(config, steps=0) == ("ddpm", 20)      # 0: all T
    with pytest.raises(Exception, match="--sampler.*ddim, ddpm.*'euler'"):
        model_sampler(config, "euler")
    for steps in (21, -1, 2.5):                                 # outside 0..T
        with pytest.raises(Exception, match=r"--steps: expected an integer in \[0, 20\]"):
            model_sampler(config, steps=steps)


# ------------------------------------------------------------------------ the commands
@pytest.mark.parametrize("flags, expected", [
    ([], ("ddpm", 7)),                                         # the model's own
    (["--sampler", "ddim", "--steps", "3"], ("ddim", 3)),      # explicit flags win
    (["--steps", "3"], ("ddpm", 3)),
    (["--sampler", "ddim"], ("ddim", 7))])
def test_sample_draws_with_the_checkpoint_sampler_unless_told(own, tmp_path, drawn, capsys,
                                                              flags, expected):
    out = tmp_path / "grid.png"
    assert sample_cli.main(["--checkpoint", own, "--n", "2", "--out", str(out), *flags]) == 0
    assert drawn == [expected]
    assert f"{expected[0]} {expected[1]} steps" in capsys.readouterr().out


def test_eval_reports_and_draws_with_the_checkpoint_sampler(own, tmp_path, drawn, capsys):
    result = _eval_json(capsys, own, tmp_path)
    assert (result["sampler"], result["steps"], result["eta"]) == ("ddpm", 7, None)
    assert drawn == [("ddpm", 7)]
    result = _eval_json(capsys, own, tmp_path, "--sampler", "ddim", "--steps", "3")
    assert (result["sampler"], result["steps"], result["eta"]) == ("ddim", 3, 0.0)
    result = _eval_json(capsys, own, tmp_path, "--steps", "0")          # 0: all T
    assert (result["sampler"], result["steps"]) == ("ddpm", 20)
    assert drawn[1:] == [("ddim", 3), ("ddpm", 20)]


def test_eval_inpainting_and_inpaint_use_the_checkpoint_sampler(own, tmp_path, drawn, capsys):
    result = _eval_json(capsys, own, tmp_path, "--inpainting", "--n", "2", "--batch", "2")
    assert (result["sampler"], result["steps"]) == ("ddpm", 7)
    result = _eval_json(capsys, own, tmp_path, "--inpainting", "--n", "2", "--steps", "0")
    assert (result["sampler"], result["steps"]) == ("ddpm", 20)   # 0 is all T here too
    out = str(tmp_path / "filled.npz")
    assert inpaint_cli.main(["--checkpoint", own, "--image", "test:0", "--n", "1",
                             "--out", out]) == 0
    assert "ddpm 7 steps" in capsys.readouterr().out
    assert inpaint_cli.main(["--checkpoint", own, "--image", "test:0", "--n", "1",
                             "--out", out, "--sampler", "ddim", "--steps", "3"]) == 0
    assert drawn == [("ddpm", 7), ("ddpm", 20), ("ddpm", 7), ("ddim", 3)]


def test_eval_prompts_uses_the_checkpoint_sampler(tmp_path, drawn, capsys):
    config = resolve("quick", overrides={**TINY, **OWN, "conditioning": "crossattn",
                                         "context_dim": 8, "text_heads": 2, "text_layers": 1})
    text = _save(tmp_path / "text.npz", config,
                 extra=CaptionStats((1.0, 2.0), (-0.1, 0.1)).to_arrays())
    result = _eval_json(capsys, text, tmp_path, "--prompts", "--per-prompt", "1")
    for part in ("prompted", "attributes"):
        assert (result[part]["sampler"], result[part]["steps"]) == ("ddpm", 7)
    assert drawn and set(drawn) == {("ddpm", 7)}


# ------------------------------------------------------------------------ training
def test_trainer_grid_draws_with_the_config_sampler(tmp_path, drawn):
    images = backend.host.random.default_rng(0).integers(0, 256, (8, 1, 28, 28)).astype(
        backend.host.uint8)
    config = resolve("quick", overrides={**TINY, **OWN, "steps": 1, "batch_size": 4})
    Trainer(config, str(tmp_path / "run"), images=images, log=lambda line: None).sample_grid()
    assert drawn == [("ddpm", 7)]


def test_a_changed_sampler_resumes_the_same_run():
    saved = {**DEFAULTS, "steps": 10}
    assert resume_changes(saved, {**saved, "sampler": "ddpm"}, "c.npz", 5) == [
        'sampler "ddim" -> "ddpm"']


# ------------------------------------------------------------------------ old files, bad keys
@pytest.mark.parametrize("T, steps", [(1000, 50), (20, 20)])
def test_a_file_without_sampler_loads_as_ddim_50_steps(tmp_path, T, steps):
    """Every file written before the key: its sample_steps (25) were the grids' only."""
    config = resolve("quick", overrides={**TINY, "T": T, "sample_steps": 20})
    del config["sampler"]
    loaded = load_checkpoint(_save(tmp_path / "old.npz", config))["config"]
    assert (loaded["sampler"], loaded["sample_steps"]) == ("ddim", steps)


def test_a_file_with_sampler_keeps_its_sample_steps(own):
    loaded = load_checkpoint(own)["config"]
    assert (loaded["sampler"], loaded["sample_steps"]) == ("ddpm", 7)


def test_an_old_file_samples_as_before(tmp_path, drawn):
    config = resolve("quick", overrides={**TINY, "sample_steps": 5})
    del config["sampler"]
    old = _save(tmp_path / "old.npz", config)
    assert sample_cli.main(["--checkpoint", old, "--n", "2",
                            "--out", str(tmp_path / "g.png")]) == 0
    assert drawn == [("ddim", 20)]           # DDIM, 50 steps capped at T = 20, as before


def test_an_unknown_sampler_is_refused_naming_the_key(tmp_path, capsys):
    for check in (lambda: resolve("quick", sets=["sampler=euler"]),
                  lambda: check_config({"sampler": "euler"})):
        with pytest.raises(ConfigError, match=r"^sampler\b.*ddim, ddpm.*'euler'"):
            check()
    code = minidiff_main(["train", "--preset", "quick", "--set", "sampler=euler",
                          "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "sampler" in err and "euler" in err
    assert not os.path.exists(tmp_path / "run")
