"""``minidiff.train``: presets, the training loop, checkpoints and diagnostic figures
(``minidiff train``, lesson 07)."""
