"""Experiments: thin absl apps over the `recal_jax` library (see `train.py`)."""
