"""``minidiff bench unet`` on a tiny network: it runs, its JSON has the documented keys, and
(where torch imports) the torch twin computes the same function as the minidiff U-Net."""
import json

import pytest

from minidiff import backend
from minidiff.bench import unet as bench_unet
from minidiff.commands import bench as bench_command
from minidiff.bench.torch_unet import torch_available

TINY = ["--batch", "2", "--repeat", "1", "--threads", "1", "--base-channels", "8",
        "--image-size", "8"]


def test_bench_unet_json_keys(capsys):
    assert bench_command.unet_main(TINY + ["--no-memory", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("config", "parameters", "batch", "repeat", "threads", "torch", "minidiff",
                "max_abs_diff", "tolerance"):
        assert key in result, key
    for step in ("train_step", "sample_step"):
        assert result["minidiff"][step]["median_ms"] > 0
        assert result["minidiff"][step]["min_ms"] <= result["minidiff"][step]["median_ms"]
    if torch_available():
        assert result["max_abs_diff"] <= bench_unet.TOLERANCE
        assert set(result["ratio"]) >= {"train_step", "sample_step"}
        assert set(result["ratio_of_minima"]) >= {"train_step", "sample_step"}
        assert result["torch_times"]["train_step"]["median_ms"] > 0
    else:
        assert result["torch"] is None


def test_bench_unet_without_torch(capsys):
    """--no-torch times minidiff alone even where torch is installed."""
    assert bench_command.unet_main(TINY + ["--no-memory", "--json", "--no-torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["torch"] is None and "ratio" not in result
    assert result["minidiff"]["train_step"]["median_ms"] > 0


def test_bench_unet_times_a_presets_network(capsys):
    """--preset times the network a preset trains (here the latent one: 4 x 7 x 7)."""
    assert bench_command.unet_main(["--preset", "ldm-quick", "--batch", "2", "--repeat", "1",
                                    "--no-memory", "--json", "--no-torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "ldm-quick"
    assert (result["config"]["in_channels"], result["config"]["image_size"]) == (4, 7)
    assert result["parameters"] < 1_000_000     # not the reference U-Net (1,623,169)


def test_memory_probe_reports_growth():
    args = bench_command._unet_parser().parse_args(TINY + ["--probe", "minidiff"])
    probe = bench_unet._probe(args)
    assert probe["peak_growth_bytes"] >= 0 and probe["baseline_bytes"] > 0
    assert probe["source"] in ("VmHWM", "ru_maxrss")


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as stop:     # argparse's exit, with one line on stderr
        bench_command.unet_main(["--repeat", "0"])
    assert stop.value.code == 2 and "--repeat" in capsys.readouterr().err


@pytest.mark.skipif(not torch_available(), reason="torch is not importable (optional)")
def test_torch_twin_matches_minidiff():
    from minidiff.bench.torch_unet import max_abs_diff, torch_twin
    from minidiff.models import UNet

    backend.manual_seed(3)
    model = UNet(base_channels=8, image_size=16, attention_resolutions=(4,))
    twin = torch_twin(model)
    assert sum(p.numel() for p in twin.parameters()) == model.num_parameters()
    x = backend.to_host(backend.randn(3, 1, 16, 16, dtype="float32"))
    t = backend.to_host(backend.randint(0, 1000, (3,)))
    assert max_abs_diff(model, twin, x, t) < 1e-4


@pytest.mark.skipif(not torch_available(), reason="torch is not importable (optional)")
def test_torch_twin_matches_minidiff_on_patches():
    """torch's pixel_unshuffle orders a patch's channels as space_to_depth does."""
    from minidiff.bench.torch_unet import max_abs_diff, torch_twin
    from minidiff.models import UNet

    backend.manual_seed(5)
    model = UNet(base_channels=8, image_size=16, channel_mults=(1, 2), patch_size=2,
                 attention_resolutions=(4,))
    twin = torch_twin(model)
    x = backend.to_host(backend.randn(2, 1, 16, 16, dtype="float32"))
    t = backend.to_host(backend.randint(0, 1000, (2,)))
    assert max_abs_diff(model, twin, x, t) < 1e-4


@pytest.mark.skipif(not torch_available(), reason="torch is not importable (optional)")
def test_torch_twin_matches_minidiff_at_batch_1():
    from minidiff.bench.torch_unet import max_abs_diff, torch_twin
    from minidiff.models import UNet

    backend.manual_seed(4)
    model = UNet(base_channels=8, image_size=8, attention_resolutions=(99,))
    twin = torch_twin(model)
    x = backend.to_host(backend.randn(1, 1, 8, 8, dtype="float32"))
    t = backend.to_host(backend.randint(0, 1000, (1,)))
    assert max_abs_diff(model, twin, x, t) < 1e-4
