"""Featurizers built on another one: keep only the question, append the dataset id.

Both are rebuilt from their identity by `features.make_featurizer`, so a
trained router featurises new queries exactly as its training data was:

* `QuestionFeaturizer(inner, pattern)`, identity
  `question(<pattern as a JSON string>):<inner identity>`: featurises group 1
  of the first match of the regular expression `pattern` in each text (the
  whole text where it does not match). For logs whose queries share a long
  prompt template (few-shot examples), which a featurizer with a maximum
  length (MiniLM: 256 tokens) would cut before the question.
* `DatasetIdFeaturizer(inner, dataset_names)`, identity
  `<inner identity>+dataset_id`: `[inner(texts), one_hot(dataset)]`, D + K
  columns for K datasets, in `dataset_names` order (what
  `experiments.compare`'s `+id` routers train on). Calling it needs each
  query's dataset: `featurizer(texts, datasets=[...])`.
"""

from __future__ import annotations

import json
import re
from typing import Optional, Sequence

import numpy as np

QUESTION_PREFIX = "question("
DATASET_ID_SUFFIX = "+dataset_id"


class QuestionFeaturizer:
  """inner(group 1 of `pattern` in each text, or the text) (module docstring)."""

  needs_datasets = False

  def __init__(self, inner, pattern: str):
    try:
      self.regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"question pattern {pattern!r} is not a regular expression: {e}") from None
    if self.regex.groups < 1:
      raise ValueError(f"question pattern {pattern!r} needs a group: the part to keep, "
                       r"e.g. 'Question: (.*)$'")
    self.inner = inner
    self.pattern = pattern
    self.dim = int(inner.dim)
    self.name = f"{QUESTION_PREFIX}{json.dumps(pattern)}):{inner.name}"

  def question(self, text: str) -> str:
    match = self.regex.search(text)
    return match.group(1) if match and match.group(1) is not None else text

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of strings, not one string")
    return self.inner([self.question(t) for t in texts])


class DatasetIdFeaturizer:
  """[inner(texts), one-hot dataset id] (module docstring)."""

  needs_datasets = True

  def __init__(self, inner, dataset_names: Sequence[str]):
    self.inner = inner
    self.dataset_names = tuple(dataset_names)
    if not self.dataset_names:
      raise ValueError("a '+dataset_id' featurizer needs the dataset names of the table")
    self.dim = int(inner.dim) + len(self.dataset_names)
    self.name = inner.name + DATASET_ID_SUFFIX

  def __call__(self, texts: Sequence[str], datasets: Optional[Sequence[str]] = None
               ) -> np.ndarray:
    texts = list(texts)
    if datasets is None:
      raise ValueError(
          f"featurizer {self.name!r} appends each query's dataset id: give the dataset of "
          f"every query (one of {list(self.dataset_names)})")
    datasets = list(datasets)
    if len(datasets) != len(texts):
      raise ValueError(f"{len(texts)} queries but {len(datasets)} datasets")
    index = {name: i for i, name in enumerate(self.dataset_names)}
    unknown = sorted({d for d in datasets if d not in index}, key=str)
    if unknown:
      raise ValueError(f"unknown dataset(s) {unknown}; this router knows "
                       f"{list(self.dataset_names)}")
    one_hot = np.eye(len(self.dataset_names), dtype=np.float32)[[index[d] for d in datasets]]
    return np.concatenate([np.asarray(self.inner(texts), np.float32), one_hot], axis=1)


def build(identity: str, *, dataset_names: Optional[Sequence[str]] = None, **kwargs):
  """The wrapper featurizer named by `identity` (inner one from `make_featurizer`)."""
  from recal_jax.data import features  # pylint: disable=import-outside-toplevel
  if identity.endswith(DATASET_ID_SUFFIX):
    inner = features.make_featurizer(identity[:-len(DATASET_ID_SUFFIX)], **kwargs)
    if dataset_names is None:
      raise ValueError(f"featurizer {identity!r} needs the dataset names "
                       "(make_featurizer(..., dataset_names=[...]))")
    return DatasetIdFeaturizer(inner, dataset_names)
  if identity.startswith(QUESTION_PREFIX):
    try:
      pattern, end = json.JSONDecoder().raw_decode(identity, len(QUESTION_PREFIX))
    except json.JSONDecodeError:
      pattern, end = None, 0
    if not isinstance(pattern, str) or identity[end:end + 2] != "):":
      raise ValueError(f"featurizer identity {identity!r}: expected "
                       f'question("<regular expression>"):<featurizer>')
    return QuestionFeaturizer(features.make_featurizer(identity[end + 2:], **kwargs), pattern)
  raise ValueError(f"featurizer identity {identity!r} is not a wrapper")


def duplicate_feature_rows(features: np.ndarray, texts: Sequence[str]) -> int:
  """How many queries share their feature row with a query of another text."""
  features = np.ascontiguousarray(np.asarray(features))
  if features.shape[0] == 0 or features.shape[1] == 0:
    return 0
  _, inverse, counts = np.unique(features, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  shared = counts[inverse] > 1
  if not shared.any():
    return 0
  texts_by_row: dict[int, set] = {}
  for row, text in zip(inverse[shared], np.asarray(texts, dtype=object)[shared]):
    texts_by_row.setdefault(int(row), set()).add(text)
  return int(sum(counts[row] for row, seen in texts_by_row.items() if len(seen) > 1))
