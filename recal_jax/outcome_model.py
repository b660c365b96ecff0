"""Per-arm outcome predictions for a trained router: expected score and cost.

A policy says which arm to call; a user also wants to know what the call will
likely score and cost, and to trade cost against quality at routing time. The
outcome model is the ERP ridge regression of `recal_jax.baselines.ERPRouter`
(one closed-form ridge per arm, on standardised query features), fit on the
training split at the end of training and saved beside the checkpoints:

  z          = [(x - feature_mean) / feature_std, 1]        [Q, D + 1]
  score[q,a] = clip(z_q . score_weights[:, a], 0, 1)        [Q, A]
  cost[q,a]  = max(z_q . cost_weights[:, a], 0)             [Q, A] USD

`predict` is pure jnp, so it jits and batches with the policy.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

FILENAME = "outcome_model.npz"


class OutcomeModel(NamedTuple):
  feature_mean: np.ndarray  # [D] float32
  feature_std: np.ndarray  # [D] float32
  score_weights: np.ndarray  # [D + 1, A] float32
  cost_weights: np.ndarray  # [D + 1, A] float32

  @property
  def feature_dim(self) -> int:
    return int(self.feature_mean.shape[0])

  @property
  def num_arms(self) -> int:
    return int(self.score_weights.shape[1])

  def predict(self, features):
    """features [Q, D] -> (expected score [Q, A], expected cost USD [Q, A])."""
    z = (features - self.feature_mean) / self.feature_std
    z = jnp.concatenate([z, jnp.ones(z.shape[:-1] + (1,), z.dtype)], axis=-1)
    score = jnp.clip(z @ self.score_weights, 0.0, 1.0)
    cost = jnp.maximum(z @ self.cost_weights, 0.0)
    return score, cost

  def save(self, directory: str) -> str:
    path = os.path.join(directory, FILENAME)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **self._asdict())
    os.replace(tmp, path)
    return path


def fit(train_table, ridge: float = 1.0) -> OutcomeModel:
  """Fits the per-arm ridge models on `train_table` (its features, no dataset id)."""
  from recal_jax import baselines  # pylint: disable=import-outside-toplevel
  erp = baselines.ERPRouter(ridge=ridge).fit(train_table)
  return OutcomeModel(**erp.linear_model())


def load(directory: str) -> OutcomeModel:
  """Reads `directory/outcome_model.npz`; a clear error if absent or damaged."""
  path = os.path.join(directory, FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: the work dir has no outcome model (it is written at the "
        "end of training by recal_jax.train.train_and_evaluate)")
  try:
    with np.load(path) as data:
      model = OutcomeModel(**{f: np.asarray(data[f], np.float32) for f in OutcomeModel._fields})
  except (KeyError, ValueError, OSError) as e:
    raise ValueError(f"{path} is not a valid outcome model: {e}") from e
  d, a = model.feature_dim, model.num_arms
  for field, shape in (("feature_std", (d,)), ("score_weights", (d + 1, a)),
                       ("cost_weights", (d + 1, a))):
    if getattr(model, field).shape != shape:
      raise ValueError(f"{path}: field {field!r} has shape "
                       f"{getattr(model, field).shape}, expected {shape}")
  return model
