"""`RoutingTable`: the one in-memory form of logged routing outcomes.

A routing table holds Q queries and A arms. An arm is a (model, strategy)
pair: the LLM that answers and the reasoning strategy it is prompted with
(`direct`, `cot`, ...). For every (query, arm) the log holds the outcome of
calling that arm on that query:

  score      [Q, A] float32 in [0, 1]  correctness (exact match, pass@1, ...)
  format_ok  [Q, A] float32 in {0, 1}  the answer parsed in the expected format
  cost       [Q, A] float32 >= 0       USD for the call (prompt + completion)
  tokens     [Q, A] float32 >= 0       completion tokens (0 where unknown)
  outcome_mask [Q, A] bool             False where the log has no outcome

Queries carry `features [Q, D]` (from a featurizer whose identity is kept in
`featurizer`), `dataset_ids [Q]` indexing `dataset_names`, and a split label
`split [Q]` (0 train, 1 validation, 2 test).

Every builder (real logs, the embedded synthetic default, a user's JSONL) ends
in this form, and `RoutingTable.validate()` checks it with errors that name the
field and the offending query / arm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


class RoutingDataError(ValueError):
  """Routing data is malformed; the message names file / line / field / id."""


@dataclasses.dataclass(frozen=True)
class RoutingTable:
  """Logged routing outcomes for Q queries x A arms (see module docstring)."""

  name: str
  query_ids: np.ndarray  # [Q] str
  texts: np.ndarray  # [Q] str (object)
  features: np.ndarray  # [Q, D] float32
  dataset_ids: np.ndarray  # [Q] int32
  dataset_names: tuple[str, ...]
  arm_models: tuple[str, ...]  # [A]
  arm_strategies: tuple[str, ...]  # [A]
  input_price: np.ndarray  # [A] float32, USD per million prompt tokens
  output_price: np.ndarray  # [A] float32, USD per million completion tokens
  score: np.ndarray  # [Q, A] float32
  format_ok: np.ndarray  # [Q, A] float32
  cost: np.ndarray  # [Q, A] float32
  tokens: np.ndarray  # [Q, A] float32
  outcome_mask: np.ndarray  # [Q, A] bool
  split: np.ndarray  # [Q] int8
  featurizer: str = "none"
  description: str = ""
  cost_is_estimated: bool = False

  # ---------------------------------------------------------------- shapes
  @property
  def num_queries(self) -> int:
    return int(self.score.shape[0])

  @property
  def num_arms(self) -> int:
    return int(self.score.shape[1])

  @property
  def num_datasets(self) -> int:
    return len(self.dataset_names)

  @property
  def feature_dim(self) -> int:
    return int(self.features.shape[1])

  @property
  def arm_names(self) -> tuple[str, ...]:
    return tuple(f"{m}|{s}" for m, s in zip(self.arm_models, self.arm_strategies))

  @property
  def strategy_names(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.arm_strategies))

  @property
  def model_names(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.arm_models))

  # ------------------------------------------------------------ selection
  def take(self, index: np.ndarray) -> "RoutingTable":
    """Rows `index` (an int array or a boolean mask over queries)."""
    index = np.asarray(index)
    if index.dtype == bool:
      index = np.flatnonzero(index)
    per_query = ("query_ids", "texts", "features", "dataset_ids", "score",
                 "format_ok", "cost", "tokens", "outcome_mask", "split")
    return dataclasses.replace(
        self, **{f: getattr(self, f)[index] for f in per_query})

  def subset(self, split: str | int) -> "RoutingTable":
    """The queries of one split (`'train'`, `'validation'`, `'test'` or 0/1/2)."""
    split_id = SPLIT_NAMES.index(split) if isinstance(split, str) else int(split)
    return self.take(self.split == split_id)

  def with_features(self, features: np.ndarray, featurizer: str) -> "RoutingTable":
    features = np.asarray(features, np.float32)
    if features.shape[0] != self.num_queries or features.ndim != 2:
      raise RoutingDataError(
          f"{self.name}: features must have shape [{self.num_queries}, D], "
          f"got {features.shape}")
    return dataclasses.replace(self, features=features, featurizer=featurizer)

  # ------------------------------------------------------------- summaries
  def mean_arm_score(self) -> np.ndarray:
    """[A] mean score of each arm over queries where it was logged."""
    m = self.outcome_mask
    return np.where(m, self.score, 0).sum(0) / np.maximum(m.sum(0), 1)

  def best_single_arm(self) -> int:
    """Index of the arm with the highest mean score on this table."""
    return int(np.argmax(self.mean_arm_score()))

  def oracle_score(self) -> float:
    """Mean over queries of the best logged score (the per-query oracle)."""
    return float(np.where(self.outcome_mask, self.score, -np.inf).max(1).mean())

  def describe(self) -> dict:
    """A JSON-able description (saved beside checkpoints)."""
    return {
        "name": self.name,
        "num_queries": self.num_queries,
        "datasets": list(self.dataset_names),
        "arms": list(self.arm_names),
        "input_price": [float(x) for x in self.input_price],
        "output_price": [float(x) for x in self.output_price],
        "feature_dim": self.feature_dim,
        "featurizer": self.featurizer,
        "split_sizes": {n: int((self.split == i).sum())
                        for i, n in enumerate(SPLIT_NAMES)},
        "cost_is_estimated": bool(self.cost_is_estimated),
        "description": self.description,
        "fingerprint": self.fingerprint(),
    }

  def fingerprint(self) -> str:
    """A short hash of the query ids and outcomes, to tell tables apart."""
    h = hashlib.sha256()
    h.update(json.dumps([self.name, list(map(str, self.query_ids))]).encode())
    for a in (self.score, self.format_ok, self.cost, self.outcome_mask):
      h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]

  # ------------------------------------------------------------ validation
  def validate(self) -> "RoutingTable":
    """Checks shapes, dtypes and ranges; raises `RoutingDataError` naming them."""
    q, a = self.score.shape if self.score.ndim == 2 else (None, None)
    if q is None:
      raise RoutingDataError(f"{self.name}: score must be [Q, A], got {self.score.shape}")
    expect = {
        "query_ids": (q,), "texts": (q,), "dataset_ids": (q,), "split": (q,),
        "format_ok": (q, a), "cost": (q, a), "tokens": (q, a),
        "outcome_mask": (q, a), "input_price": (a,), "output_price": (a,),
    }
    for field, shape in expect.items():
      got = np.shape(getattr(self, field))
      if got != shape:
        raise RoutingDataError(f"{self.name}: field {field!r} has shape {got}, expected {shape}")
    if self.features.ndim != 2 or self.features.shape[0] != q:
      raise RoutingDataError(
          f"{self.name}: field 'features' has shape {self.features.shape}, expected [{q}, D]")
    if len(self.arm_models) != a or len(self.arm_strategies) != a:
      raise RoutingDataError(
          f"{self.name}: {len(self.arm_models)} arm_models / {len(self.arm_strategies)} "
          f"arm_strategies for {a} arms")
    if len(set(self.arm_names)) != a:
      raise RoutingDataError(f"{self.name}: duplicate arms in {self.arm_names}")
    ids, counts = np.unique(np.asarray(self.query_ids).astype(str), return_counts=True)
    if (counts > 1).any():
      raise RoutingDataError(f"{self.name}: duplicate query id {ids[counts > 1][0]!r}")
    if q and (self.dataset_ids.min() < 0 or self.dataset_ids.max() >= self.num_datasets):
      bad = int(np.flatnonzero((self.dataset_ids < 0) |
                               (self.dataset_ids >= self.num_datasets))[0])
      raise RoutingDataError(
          f"{self.name}: query {self.query_ids[bad]!r} has dataset id "
          f"{self.dataset_ids[bad]} outside [0, {self.num_datasets})")
    if not np.isin(self.split, (TRAIN, VALIDATION, TEST)).all():
      raise RoutingDataError(f"{self.name}: split labels must be 0, 1 or 2")
    m = self.outcome_mask.astype(bool)
    checks = (
        ("score", self.score, 0.0, 1.0),
        ("format_ok", self.format_ok, 0.0, 1.0),
        ("cost", self.cost, 0.0, np.inf),
        ("tokens", self.tokens, 0.0, np.inf),
    )
    for field, values, lo, hi in checks:
      bad = m & ~(np.isfinite(values) & (values >= lo) & (values <= hi))
      if bad.any():
        i, j = np.argwhere(bad)[0]
        raise RoutingDataError(
            f"{self.name}: field {field!r} of query {self.query_ids[i]!r}, arm "
            f"{self.arm_names[j]!r} is {values[i, j]!r}, outside [{lo}, {hi}]")
    if not np.isfinite(self.features).all():
      i = int(np.argwhere(~np.isfinite(self.features))[0, 0])
      raise RoutingDataError(
          f"{self.name}: field 'features' of query {self.query_ids[i]!r} is not finite")
    if q and not m.any(1).all():
      i = int(np.flatnonzero(~m.any(1))[0])
      raise RoutingDataError(f"{self.name}: query {self.query_ids[i]!r} has no logged outcome")
    return self


def stratified_split(texts: Sequence[str], dataset_ids: np.ndarray,
                     fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                     seed: int = 0) -> np.ndarray:
  """[Q] split labels, stratified by dataset, with a fixed seed.

  Queries with the same text always land in the same split (callers should
  have de-duplicated, but this makes leaks impossible). Within each dataset
  the unique texts are shuffled by `seed` and cut by `fractions`.
  """
  if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
    raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
  texts = np.asarray(texts, dtype=object)
  dataset_ids = np.asarray(dataset_ids)
  split = np.zeros(len(texts), np.int8)
  rng = np.random.default_rng(seed)
  for d in np.unique(dataset_ids):
    rows = np.flatnonzero(dataset_ids == d)
    uniq = sorted(set(texts[rows].tolist()))
    order = rng.permutation(len(uniq))
    n_train = int(round(fractions[0] * len(uniq)))
    n_val = int(round(fractions[1] * len(uniq)))
    label = {}
    for rank, u in enumerate(order):
      label[uniq[u]] = TRAIN if rank < n_train else (
          VALIDATION if rank < n_train + n_val else TEST)
    split[rows] = [label[t] for t in texts[rows]]
  return split


def dedupe_by_text(texts: Sequence[str]) -> np.ndarray:
  """Indices of the first occurrence of each distinct text, in order."""
  seen = {}
  for i, t in enumerate(texts):
    seen.setdefault(t, i)
  return np.asarray(sorted(seen.values()), np.int64)
