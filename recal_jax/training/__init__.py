"""The training engine (see `recal_jax.train` for the public names)."""
