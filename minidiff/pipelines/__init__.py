"""Checkpoint -> samples: the one loader (``load.py``), the one sampling loop (``sample.py``),
what a conditioned model is given (``conditions.py``) and inpainting (``inpaint.py``)."""
