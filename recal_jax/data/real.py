"""Real routing logs as `RoutingTable`s, built and cached with TFDS.

    from recal_jax.data.real import load_real_table
    table = load_real_table("llmrouter_seven")          # 3,723 queries x 9 arms
    train = table.subset("train")

Names (see `recal_jax.data.builders` for what each log holds):

  routeprofile     600 queries x 8 models, 12 tasks; exact cost, real format_ok
  llmrouter_seven  3,723 queries x 9 models, 7 datasets; estimated cost
  routellm         MMLU + GSM8K, Mixtral-8x7B vs GPT-4-1106; estimated cost

The logs are read from the manual dir (the read-only `routing_data` folder:
argument `manual_dir`, else env `RECAL_ROUTING_DATA`, else
`<repo>/../shared/routing_data`). With `use_tfds=True` (default) the table is
built once by the TFDS builder into `data_dir` (argument, else env
`RECAL_TFDS_DIR`, else `~/.cache/recal_jax/tfds`) as ArrayRecord files and read
back with `builder.as_data_source()`; TensorFlow is not needed. With
`use_tfds=False` the parser is called directly. Both give the same table.
Tables have empty features (`[Q, 0]`, featurizer 'none'): add features with a
featurizer and `RoutingTable.with_features`.

A cached build is keyed by name, seed and builder version only: after the
logs change, delete `<data_dir>/<name>/` (a fingerprint check on reading
catches most stale caches).
"""

from __future__ import annotations

import os
import pathlib

from recal_jax.data.table import RoutingDataError, RoutingTable

MANUAL_DIR_ENV = "RECAL_ROUTING_DATA"
DATA_DIR_ENV = "RECAL_TFDS_DIR"
REAL_TABLE_NAMES = ("routeprofile", "llmrouter_seven", "routellm")

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_manual_dir() -> str:
  """The routing_data folder: env RECAL_ROUTING_DATA or <repo>/../shared/routing_data."""
  env = os.environ.get(MANUAL_DIR_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  return str((_REPO_ROOT / ".." / "shared" / "routing_data").resolve())


def default_data_dir() -> str:
  """The TFDS build cache: env RECAL_TFDS_DIR or ~/.cache/recal_jax/tfds."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  return os.path.join(os.path.expanduser("~"), ".cache", "recal_jax", "tfds")


def load_real_table(name: str, *, manual_dir: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None, seed: int = 0,
                    use_tfds: bool = True) -> RoutingTable:
  """Loads one real routing log as a validated `RoutingTable`.

  Args:
    name: 'routeprofile', 'llmrouter_seven' or 'routellm'.
    manual_dir: the routing_data folder (default `default_manual_dir()`).
    data_dir: TFDS build cache (default `default_data_dir()`); unused when
      `use_tfds=False`.
    seed: seed of the stratified 70/10/20 train/validation/test split.
    use_tfds: build / read through the TFDS builder (cached) if True, else
      call the parser directly.

  Raises:
    ValueError: unknown `name`.
    RoutingDataError: the folder is missing or a log is malformed (the
      message names the file, record / line and field).
  """
  from recal_jax.data import builders  # pylint: disable=g-import-not-at-top

  if name not in builders.REGISTRY:
    raise ValueError(f"unknown real table {name!r}; choose from {REAL_TABLE_NAMES}")
  subdir, parser, builder_cls = builders.REGISTRY[name]
  manual_dir = os.fspath(manual_dir) if manual_dir is not None else default_manual_dir()
  folder = os.path.join(manual_dir, subdir)
  if not os.path.isdir(folder):
    raise RoutingDataError(
        f"{folder}: not found; pass manual_dir=... or set {MANUAL_DIR_ENV} to the "
        "routing_data folder")
  if not use_tfds:
    return parser(folder, seed=seed)

  from recal_jax.data.builders import _tfds_base  # pylint: disable=g-import-not-at-top

  data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
  builder = _tfds_base.make_builder(builder_cls, data_dir=data_dir, seed=seed)
  _tfds_base.prepare(builder, manual_dir)
  return _tfds_base.table_from_builder(builder)


__all__ = ["DATA_DIR_ENV", "MANUAL_DIR_ENV", "REAL_TABLE_NAMES", "default_data_dir",
           "default_manual_dir", "load_real_table"]
