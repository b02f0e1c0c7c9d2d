"""Tiny conditioned models for tests: a 28x28 pixel U-Net of 8/16 channels trained for two
steps on eight digits, enough for the condition to reach the network, in seconds."""
from minidiff import backend
from minidiff.config.presets import resolve
from minidiff.data.mnist import load_mnist
from minidiff.train.trainer import Trainer

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [14], "T": 10, "batch_size": 4, "steps": 2,
        "warmup_steps": 1, "train_images": 8, "log_every": 0, "sample_every": 0,
        "checkpoint_every": 0, "diag_every": 0, "sample_steps": 2, "ema_decay": 0.5,
        "context_dim": 8, "text_heads": 2, "text_layers": 1}


def train_tiny(folder, conditioning: str, **config) -> str:
    """Train the tiny model of ``conditioning`` (and any other ``config`` keys) into
    ``folder`` (the random stream left as it was) and return the path of its EMA weights."""
    images, labels = load_mnist("train")
    saved = backend.get_rng_state()
    config = resolve("quick", overrides={**TINY, "conditioning": conditioning, **config})
    Trainer(config, str(folder), images=images[:8], labels=labels[:8],
            log=lambda _: None).run()
    backend.set_rng_state(saved)
    return f"{folder}/ema.npz"
