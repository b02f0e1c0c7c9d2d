"""Inputs that cannot be honoured as given: a digit drawn dark on light (inverted, with a
note), a checkpoint whose config was edited after saving in what its weights were trained for
(refused, naming the keys), and a shipped file asked for by its ``data/...`` path from a folder
that does not hold it (found, or refused with every place searched)."""
import json
import os

import numpy as np
import pytest

from minidiff import backend
from minidiff.checkpoint import SEALED, CheckpointError, load_checkpoint
from minidiff.config.presets import resolve
from minidiff.data.mnist import load_mnist
from minidiff.data.paths import DataNotFoundError, resolve_user_path
from minidiff.pipelines.inpaint import is_inverted, load_images
from minidiff.train.trainer import Trainer


def test_a_dark_on_light_png_is_inverted_with_a_note(tmp_path):
    from PIL import Image
    digit = backend.to_host(load_mnist("test")[0][0, 0])
    paths = {}
    for name, pixels in (("light_on_dark", digit), ("dark_on_light", 255 - digit)):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(paths[name])
    notes = []
    same, _ = load_images(paths["light_on_dark"], note=notes.append)
    assert notes == [] and np.array_equal(backend.to_host(same)[0, 0], digit)
    fixed, _ = load_images(paths["dark_on_light"], note=notes.append)
    assert np.array_equal(backend.to_host(fixed)[0, 0], digit)
    assert len(notes) == 1 and "inverted" in notes[0] and "dark_on_light.png" in notes[0]


def test_no_mnist_digit_counts_as_inverted():
    images = backend.to_host(load_mnist("test")[0][:2000, 0])
    assert not any(is_inverted(image) for image in images)
    assert all(is_inverted(255 - image) for image in images[:200])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    config = resolve("quick", sets=["base_channels=8", "channel_mults=[1,2]", "T=10",
                                    "sample_every=0", "diag_every=0", "log_every=0",
                                    "checkpoint_every=0", "warmup_steps=1", "sample_steps=2"],
                     overrides={"steps": 1, "batch_size": 4})
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 28, 28)).astype(np.uint8)
    run = str(tmp_path_factory.mktemp("sealed") / "run")
    Trainer(config, run, images=images, log=lambda line: None).run()
    return os.path.join(run, "ema.npz")


def _edited(export, folder, **changes):
    arrays = backend.load_npz(export)
    config = {**json.loads(str(arrays["config"])), **changes}
    arrays["config"] = backend.host.asarray(json.dumps(config, sort_keys=True))
    path = os.path.join(folder, "edited.npz")
    backend.save_npz(path, arrays)
    return path


def test_a_config_edited_in_a_sealed_key_is_refused(export, tmp_path):
    assert {"T", "prediction"} <= set(SEALED)
    with pytest.raises(CheckpointError, match=r'edited after saving .*T 10 -> 5, '
                                              r'prediction "x0" -> "eps"'):
        load_checkpoint(_edited(export, str(tmp_path), T=5, prediction="eps"))


def test_other_edits_and_old_files_still_load(export, tmp_path):
    assert load_checkpoint(_edited(export, str(tmp_path), log_every=7))["config"][
        "log_every"] == 7
    arrays = backend.load_npz(export)          # a file written before the seal existed
    del arrays["config_sha256"], arrays["config_sealed"]
    config = {**json.loads(str(arrays["config"])), "T": 5}
    arrays["config"] = backend.host.asarray(json.dumps(config))
    backend.save_npz(tmp_path / "old.npz", arrays)
    assert load_checkpoint(tmp_path / "old.npz")["config"]["T"] == 5
    for name in ("quick", "ldm", "txt2img", "inpaint", "ae", "claim_simple"):
        assert load_checkpoint(resolve_user_path(f"data/checkpoints/{name}.npz"))


def test_a_missing_data_path_lists_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_user_path("data/checkpoints/quick.npz").endswith(
        os.path.join("checkpoints", "quick.npz"))             # found from an empty folder
    with pytest.raises(DataNotFoundError) as info:
        resolve_user_path("data/checkpoints/nope.npz", "--classifier")
    text = str(info.value)
    assert text.startswith("--classifier: no such file: data/checkpoints/nope.npz; looked in:")
    assert str(tmp_path) in text and "the source tree" in text and "installation" in text
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataNotFoundError, match=r"\$MINIDIFF_DATA .*elsewhere"):
        resolve_user_path("data/checkpoints/quick.npz", "--checkpoint")
