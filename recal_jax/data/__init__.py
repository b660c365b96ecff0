"""Routing data: the `RoutingTable` form, its builders and featurizers.

`load_table(name, ...)` is the one entry point:

  'synthetic'        the embedded synthetic world (`make_synthetic`), latent
                     features unless a text `featurizer` is asked for
  'jsonl:<path>'     a user's own logs (`jsonl.load_jsonl`, schema in its docstring)
  'routeprofile', 'llmrouter_seven', 'routellm'
                     real logs (`recal_jax.data.real.load_real_table`)

Imports are light: numpy only. TFDS, JAX and model code load only when a
builder that needs them is called.
"""

from __future__ import annotations

from recal_jax.data.features import featurize
from recal_jax.data.features import make_featurizer
from recal_jax.data.synthetic import make_synthetic
from recal_jax.data.table import RoutingDataError
from recal_jax.data.table import RoutingTable

REAL_DATASETS = ("routeprofile", "llmrouter_seven", "routellm")
DEFAULT_TEXT_FEATURIZER = "hashing"

__all__ = ["RoutingTable", "RoutingDataError", "load_table", "load_table_from_config",
           "make_synthetic", "make_featurizer", "featurize", "REAL_DATASETS"]


def load_table_from_config(data) -> RoutingTable:
  """`load_table` with the arguments of a `config.data` block (ConfigDict or dict).

  Fields (absent ones take `load_table`'s defaults): `name` ('jsonl' reads
  `path`; 'jsonl:<path>' works too), `featurizer`
  ('' = None), `manual_dir` ('' = default), `seed`; synthetic only:
  `num_queries`, `feature_dim`; synthetic and JSONL: `split_fractions`
  (train, validation, test) for queries without a given split; JSONL only:
  `prices` ('' or a JSON file of USD / 1M token prices per model);
  `question_pattern` (a regex; group 1 is the part of each text featurised,
  `feature_wrappers.QuestionFeaturizer`).
  """
  get = data.get
  name = str(get("name", "synthetic"))
  if name == "jsonl":
    if not get("path", ""):
      raise ValueError("config.data.name='jsonl' needs the log's path: --config.data.path=PATH")
    name = "jsonl:" + str(get("path"))
  kwargs = {}
  if name == "synthetic":
    kwargs.update(num_queries=int(get("num_queries", 4000)),
                  feature_dim=int(get("feature_dim", 32)))
  if name == "synthetic" or name.startswith("jsonl:"):
    fractions = get("split_fractions", None)
    if fractions is not None:
      kwargs["split_fractions"] = tuple(float(f) for f in fractions)
  if name.startswith("jsonl:") and get("prices", ""):
    kwargs["prices"] = get("prices")
  featurizer = get("featurizer", "") or None
  if get("question_pattern", ""):
    import json  # pylint: disable=import-outside-toplevel
    featurizer = (f"question({json.dumps(get('question_pattern'))}):"
                  f"{featurizer or DEFAULT_TEXT_FEATURIZER}")
  return load_table(name, featurizer=featurizer,
                    manual_dir=get("manual_dir", "") or None, seed=int(get("seed", 0)),
                    **kwargs)


def load_table(name: str, *, featurizer: str | None = None, manual_dir=None,
               seed: int = 0, **kwargs) -> RoutingTable:
  """Builds a `RoutingTable` by name, with features.

  Args:
    name: 'synthetic', 'jsonl:<path>', or one of `REAL_DATASETS`.
    featurizer: identity or short name for `make_featurizer` ('hashing',
      'hashing-v1:dim=...', 'minilm', ...). None keeps the synthetic table's
      latent features, and means 'hashing' for tables without features.
    manual_dir: directory holding manually downloaded files (real datasets).
    seed: draws the synthetic table; seeds the stratified split of queries
      without a given split.
    **kwargs: more arguments for the builder (`make_synthetic`: num_queries,
      feature_dim, split_fractions; `load_jsonl`: arms, datasets, prices,
      split_fractions).

  Returns:
    A validated `RoutingTable` whose `featurizer` names how features were made.

  Raises:
    ValueError: unknown name or unexpected arguments.
    RoutingDataError: malformed data.
  """
  if name == "synthetic":
    table = make_synthetic(seed=seed, **kwargs)
    if featurizer is None or featurizer == table.featurizer:
      return table
  elif name.startswith("jsonl:"):
    from recal_jax.data import jsonl  # pylint: disable=import-outside-toplevel
    path = name[len("jsonl:"):]
    if not path:
      raise ValueError("load_table('jsonl:<path>'): the path is empty")
    table = jsonl.load_jsonl(path, seed=seed, **kwargs)
  elif name in REAL_DATASETS:
    from recal_jax.data import real  # pylint: disable=import-outside-toplevel
    table = real.load_real_table(name, manual_dir=manual_dir, seed=seed, **kwargs)
  else:
    raise ValueError(f"unknown routing table {name!r}; expected 'synthetic', "
                     f"'jsonl:<path>' or one of {REAL_DATASETS}")
  if featurizer is None and table.feature_dim > 0:
    return table.validate()
  return featurize(table, featurizer or DEFAULT_TEXT_FEATURIZER).validate()
