"""minidiff claim (issue 13) end to end on tiny stand-ins of the three models: the table's
columns, the Table-4 split adding up to the full bound, the JSON keys, the samples PNG; its
full bound is the library's bits_per_dim on the same images with the model's variance."""
import json
import math

import numpy as np
import pytest

from minidiff import backend, commands as cli

TINY = ["--set", "base_channels=8", "--set", "channel_mults=[1,2]", "--set", "T=10",
        "--steps", "2", "--batch-size", "4", "--train-images", "16", "--set", "sample_every=0",
        "--set", "diag_every=0", "--set", "checkpoint_every=0", "--set", "warmup_steps=1",
        "--set", "sample_steps=2"]
OBJECTIVES = {"simple": [], "vlb": ["--set", "t_sampler=loss-second-moment"],
              "hybrid": ["--set", "variance=learned"]}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Three tiny runs of the claim preset, one per objective (a few seconds each)."""
    folder = tmp_path_factory.mktemp("claim")
    paths = []
    for objective, extra in OBJECTIVES.items():
        out = str(folder / f"claim_{objective}")
        assert cli.main(["train", "--preset", "claim", "--set", f"objective={objective}",
                         *extra, *TINY, "--out", out]) == 0
        paths.append(f"{out}/ema.npz")
    return folder, paths


def _claim(folder, paths, *extra):
    return ["claim", "--checkpoints", *paths, "--bpd-images", "3", "--mc-images", "4",
            "--n", "4", "--steps", "3", "--grid", "2", "--no-floor", "--reference-images",
            "16", "--batch", "4", "--stats-dir", str(folder / "stats"), "--out",
            str(folder / "figures"), *extra]


def test_claim_json_on_stand_ins(stand_ins, capsys):
    from PIL import Image

    from minidiff.data.mnist import load_mnist, to_unit_range
    from minidiff.diffusion import bits_per_dim
    from minidiff.pipelines.load import load_pipeline
    folder, paths = stand_ins
    capsys.readouterr()
    assert cli.main(_claim(folder, paths, "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["models"]
    assert [r["name"] for r in rows] == ["claim_simple", "claim_vlb", "claim_hybrid"]
    assert [r["objective"] for r in rows] == ["simple", "vlb", "hybrid"]
    assert [r["variance"] for r in rows] == ["fixed_small", "fixed_small", "learned"]
    assert rows[1]["t_sampler"] == "loss-second-moment"
    images = to_unit_range(load_mnist("test")[0][:3])
    for r, path in zip(rows, paths):
        full = r["bpd_full"]
        assert set(full) >= {"bpd", "stderr", "n", "prior", "distortion", "rate", "seconds"}
        assert full["n"] == 3 and r["bpd_mc"]["n"] == 4
        assert full["prior"] + full["distortion"] + full["rate"] == pytest.approx(
            full["bpd"], rel=1e-12)
        assert full["prior"] > 0 and full["distortion"] > 0 and full["rate"] > 0
        assert len(r["per_t_bits"]) == r["T"] == 10
        assert sum(r["per_t_bits"]) + full["prior"] == pytest.approx(full["bpd"], rel=1e-9)
        pipeline = load_pipeline(path)
        model, schedule = pipeline.eps(), pipeline.schedule
        backend.manual_seed(0)      # claim's --seed: the same noise draws (float32 sums)
        want = bits_per_dim(schedule, model, images, variance=r["variance"])
        assert full["bpd"] == pytest.approx(want["bpd"], rel=1e-6)
        assert full["stderr"] == pytest.approx(want["stderr"], rel=1e-5)
        v = r["t_sampler_variance"]
        assert 0 < v["second_moment"] < v["uniform"]
        assert math.isfinite(r["fid"]) and 0 < r["mean_confidence"] <= 1
        assert sum(r["class_histogram"]) == 4
    picture = np.asarray(Image.open(result["figures"][0]))
    assert picture.shape[0] == 2 * 3 * (28 + 2) + 2 * 2   # three rows of 2 samples, scale 2


def test_claim_markdown_table(stand_ins, capsys):
    folder, paths = stand_ins
    capsys.readouterr()
    assert cli.main(_claim(folder, paths[2:])) == 0
    text = capsys.readouterr().out
    header, rule, row = text.splitlines()[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["model", "objective", "variance", "bits/dim, full bound",
                       "bits/dim, Monte-Carlo", "L_T (prior)", "L_0 (distortion)",
                       "sum L_t-1 (rate)", "FID", "confidence"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(columns) == rule.count("---")
    assert cells[:3] == ["claim_hybrid", "hybrid", "learned"] and "±" in cells[3]
    split = sum(float(cells[k]) for k in (5, 6, 7))
    assert split == pytest.approx(float(cells[3].split("±")[0]), abs=2e-3)
