"""Test setup: four fake CPU devices, set before JAX is first imported.

Multi-device code (sharded batches, `shard_map`, `pmap`) is tested on these
devices; see WORKSPACE.md for why each multi-device step is blocked on before
the next is dispatched.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)
