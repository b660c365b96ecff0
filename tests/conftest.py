"""Test setup: four fake CPU devices, set before JAX is first imported; scratch dirs.

Multi-device code (sharded batches, `shard_map`, `pmap`) is tested on these
devices; see WORKSPACE.md for why each multi-device step is blocked on before
the next is dispatched.
"""
import atexit
import os
import shutil
import tempfile

# Nothing a test builds goes to ~/.cache (the TFDS build cache's default) or
# stays behind: one scratch directory per test process, removed at exit.
_SCRATCH = tempfile.mkdtemp(prefix="recal-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["RECAL_TFDS_DIR"] = os.path.join(_SCRATCH, "tfds")
os.environ["TFDS_DATA_DIR"] = os.path.join(_SCRATCH, "tensorflow_datasets")

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)
