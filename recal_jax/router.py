"""Route new queries with a trained router.

    router = Router.load("/tmp/recal_quick")                 # best checkpoint
    result = router.route(["What is 17 * 23?", ...])          # texts or features
    result = router.route(texts, cost_weight=300.0)           # cheaper routes
    result = router.route(texts, budget=1e-3)                 # <= 1e-3 USD / query
    for record in result.records(): print(record)

Decisions, for queries x with the policy's arm probabilities pi(a | x) and the
outcome model's expected cost c(x, a) (`recal_jax.outcome_model`):

* default (no `cost_weight`, no `budget`): the policy's greedy route, exactly
  what evaluation during training uses. A token router can write a malformed
  route; then the most probable well-formed arm is returned and the query is
  flagged `malformed_greedy`.
* `cost_weight = lam` (nats per USD): arg max_a log pi(a | x) - lam * c(x, a).
* `budget = B` (USD per query, on average over the batch): the smallest lam
  on a fixed grid (0 and 96 log-spaced values in [1, 1e9]) whose routes have
  mean expected cost <= B; if even the largest lam exceeds B, the cheapest
  expected arm per query is returned and `budget_met` is False.

Everything after featurisation is one jitted, batched function.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recal_jax import checkpointing
from recal_jax import outcome_model as outcome_lib
from recal_jax import policies

COST_WEIGHT_GRID = np.concatenate([[0.0], np.logspace(0, 9, 96)]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _ArmTable:
  """What `policies.make_policy` needs of a table, rebuilt from table.json."""

  arm_models: tuple[str, ...]
  arm_strategies: tuple[str, ...]

  @property
  def num_arms(self) -> int:
    return len(self.arm_models)


@dataclasses.dataclass(frozen=True)
class RouteResult:
  """Per-query routing decisions (Q queries, A arms)."""

  arm_index: np.ndarray  # [Q] int
  model: list  # [Q] str
  strategy: list  # [Q] str
  probabilities: np.ndarray  # [Q, A] policy probabilities of each arm
  predicted_score: np.ndarray  # [Q] expected score of the chosen arm
  expected_cost: np.ndarray  # [Q] expected USD of the chosen arm
  malformed_greedy: np.ndarray  # [Q] bool, the greedy route was malformed
  cost_weight: Optional[float]  # lam used (None: greedy)
  budget_met: Optional[bool]  # with `budget`: whether the mean cost <= budget

  def records(self, arm_names: Optional[Sequence[str]] = None) -> list[dict]:
    """One JSON-able dict per query."""
    out = []
    for q in range(len(self.arm_index)):
      record = {"arm": int(self.arm_index[q]), "model": self.model[q],
                "strategy": self.strategy[q],
                "predicted_score": float(self.predicted_score[q]),
                "expected_cost_usd": float(self.expected_cost[q]),
                "probability": float(self.probabilities[q, self.arm_index[q]])}
      if arm_names is not None:
        record["probabilities"] = {n: round(float(p), 6) for n, p in
                                   zip(arm_names, self.probabilities[q])}
      if self.malformed_greedy[q]:
        record["malformed_greedy"] = True
      out.append(record)
    return out


def _route_core(policy, outcome: outcome_lib.OutcomeModel, params, features,
                cost_weights):
  """The jitted part: greedy routes and routes for every cost weight."""
  arm_logp = policy.arm_log_probs(params, features)  # [Q, A]
  greedy = policy.greedy(params, features).arm_indices  # [Q]
  fallback = jnp.argmax(arm_logp, axis=-1)
  malformed = greedy < 0
  greedy = jnp.where(malformed, fallback, greedy)
  score, cost = outcome.predict(features)  # [Q, A] each
  utility = arm_logp[None] - cost_weights[:, None, None] * cost[None]  # [L, Q, A]
  weighted = jnp.argmax(utility, axis=-1)  # [L, Q]
  mean_cost = jnp.take_along_axis(cost[None], weighted[..., None], -1)[..., 0].mean(-1)
  cheapest = jnp.argmin(cost, axis=-1)
  return dict(probabilities=jnp.exp(arm_logp), greedy=greedy, malformed=malformed,
              weighted=weighted, mean_cost=mean_cost, cheapest=cheapest,
              score=score, cost=cost)


class Router:
  """A trained router restored from a work dir (see module docstring)."""

  def __init__(self, policy, params, outcome: outcome_lib.OutcomeModel,
               description: dict, config: ml_collections.ConfigDict,
               featurizer=None, step: Optional[int] = None):
    self.policy = policy
    self.params = params
    self.outcome = outcome
    self.description = description
    self.config = config
    self.featurizer = featurizer
    self.step = step
    self.arm_names = tuple(description["arms"])
    self.feature_dim = int(description["feature_dim"])
    self._core = jax.jit(functools.partial(_route_core, policy, outcome))

  # ------------------------------------------------------------ loading
  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = "best",
           featurizer: Optional[str] = None, text_featurizer: bool = True) -> "Router":
    """Restores a router from a training work dir.

    Args:
      workdir: the `--workdir` of `experiments.train`.
      checkpoint: 'best' (best on validation), 'latest', or a step number.
      featurizer: optionally the featurizer identity the caller expects; an
        error if the router was trained with another one.
      text_featurizer: build the featurizer that routes texts; False routes
        features only (e.g. a table's own features in `experiments.compare`).

    Raises:
      FileNotFoundError: no work dir, no config / table description, or no
        such checkpoint.
      ValueError: featurizer mismatch or a damaged work dir.
    """
    workdir = os.path.abspath(workdir)
    for name in ("config.json", "table.json"):
      if not os.path.exists(os.path.join(workdir, name)):
        raise FileNotFoundError(
            f"{workdir} is not a training work dir: {name} is missing")
    config = ml_collections.ConfigDict(checkpointing.read_json(os.path.join(workdir, "config.json")))
    description = checkpointing.read_json(os.path.join(workdir, "table.json"))
    recorded = description.get("featurizer", "none")
    if featurizer is not None and featurizer != recorded:
      raise ValueError(f"{workdir} was trained with featurizer {recorded!r}, not "
                       f"{featurizer!r}: its router cannot read those features")
    arms = [name.rsplit("|", 1) for name in description["arms"]]
    arm_table = _ArmTable(tuple(m for m, _ in arms), tuple(s for _, s in arms))
    policy = policies.make_policy(config.policy, arm_table)
    # The params are their own checkpoint item: no train state or optimizer.
    checkpointer = checkpointing.Checkpointer(workdir, best_metric=config.get("best_metric"))
    try:
      step = cls._checkpoint_step(checkpointer, checkpoint)
      params = checkpointer.restore_params(step)
    finally:
      checkpointer.close()
    outcome = outcome_lib.load(workdir)
    if outcome.num_arms != len(arms) or outcome.feature_dim != int(description["feature_dim"]):
      raise ValueError(f"{workdir}/{outcome_lib.FILENAME} is for {outcome.num_arms} arms x "
                       f"{outcome.feature_dim} features, the router for {len(arms)} x "
                       f"{description['feature_dim']}")
    make_text_featurizer = text_featurizer
    text_featurizer = None
    if make_text_featurizer and recorded not in ("none", "synthetic-latent"):
      from recal_jax.data import features as features_lib  # pylint: disable=import-outside-toplevel
      text_featurizer = features_lib.make_featurizer(
          recorded, dataset_names=description["datasets"])  # for '...+dataset_id' routers
    return cls(policy, params, outcome, description, config,
               featurizer=text_featurizer, step=step)

  @staticmethod
  def _checkpoint_step(checkpointer: checkpointing.Checkpointer,
                       checkpoint: str | int) -> int:
    """The step of the requested checkpoint; only complete saves count."""
    workdir = checkpointer.workdir
    if checkpoint == "best":
      step = checkpointer.best_step()
      if step is None:
        raise FileNotFoundError(f"{workdir} has no checkpoint saved with validation "
                                f"metrics (no best checkpoint)")
      return step
    steps = checkpointer.complete_steps()
    if checkpoint == "latest":
      if not steps:
        raise FileNotFoundError(f"{workdir} has no complete checkpoint in "
                                f"{os.path.join(workdir, 'checkpoints')}")
      return steps[-1]
    step = int(checkpoint)
    if step not in steps:
      raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; saved steps: {steps}")
    return step

  # ------------------------------------------------------------ routing
  def featurize(self, texts_or_features, datasets=None) -> np.ndarray:
    """Texts (featurised like the training data) or features [Q, D] -> [Q, D].

    `datasets`: each text's dataset name, for routers trained with the dataset
    id among their features (featurizer '...+dataset_id').
    """
    if isinstance(texts_or_features, str):
      texts_or_features = [texts_or_features]
    if len(texts_or_features) and isinstance(texts_or_features[0], str):
      if self.featurizer is None:
        raise ValueError(
            f"this router was trained on features {self.description.get('featurizer')!r} "
            "that cannot be computed from text: pass features [Q, D] instead")
      if getattr(self.featurizer, "needs_datasets", False):
        return np.asarray(self.featurizer(list(texts_or_features), datasets=datasets),
                          np.float32)
      return np.asarray(self.featurizer(list(texts_or_features)), np.float32)
    features = np.asarray(texts_or_features, np.float32)
    if features.ndim != 2 or features.shape[1] != self.feature_dim:
      raise ValueError(f"features must have shape [Q, {self.feature_dim}] "
                       f"(featurizer {self.description.get('featurizer')!r}), got {features.shape}")
    if not np.isfinite(features).all():
      raise ValueError(f"features row {int(np.argwhere(~np.isfinite(features))[0, 0])} is not finite")
    return features

  def arm_scores(self, texts_or_features, datasets=None) -> tuple[np.ndarray, np.ndarray]:
    """([Q, A] log pi(a | x), [Q, A] expected cost c(x, a)): what `cost_weight` trades off.

    An arm the policy cannot produce (log-probability -inf) gets -1e30, so
    both arrays are finite.
    """
    features = self.featurize(texts_or_features, datasets)
    arm_logp = jax.device_get(self.policy.arm_log_probs(self.params, features))
    _, cost = jax.device_get(self.outcome.predict(features))
    return (np.maximum(np.asarray(arm_logp, np.float64), -1e30),
            np.asarray(cost, np.float64))

  def route(self, texts_or_features, cost_weight: Optional[float] = None,
            budget: Optional[float] = None, datasets=None) -> RouteResult:
    """Routes a batch of queries (see the module docstring for the rules)."""
    if cost_weight is not None and budget is not None:
      raise ValueError("give cost_weight or budget, not both")
    if cost_weight is not None and not (np.isfinite(cost_weight) and cost_weight >= 0):
      raise ValueError(f"cost_weight must be a finite number >= 0, got {cost_weight}")
    if budget is not None and not (np.isfinite(budget) and budget >= 0):
      raise ValueError(f"budget must be a finite number >= 0 (USD per query), got {budget}")
    features = self.featurize(texts_or_features, datasets)
    if features.shape[0] == 0:
      raise ValueError("no queries to route")
    grid = COST_WEIGHT_GRID if cost_weight is None else np.asarray([cost_weight], np.float32)
    out = jax.device_get(self._core(self.params, features, grid))
    budget_met, used = None, cost_weight
    if cost_weight is not None:
      choice = out["weighted"][0]
    elif budget is not None:
      meets = np.flatnonzero(out["mean_cost"] <= budget)
      budget_met = bool(meets.size)
      if meets.size:
        used = float(grid[meets[0]])
        choice = out["weighted"][meets[0]]
      else:
        used = float("inf")
        choice = out["cheapest"]
    else:
      choice = out["greedy"]
    choice = np.asarray(choice, np.int64)
    rows = np.arange(len(choice))
    models = [self.arm_names[a].rsplit("|", 1)[0] for a in choice]
    strategies = [self.arm_names[a].rsplit("|", 1)[1] for a in choice]
    malformed = (np.asarray(out["malformed"], bool) if cost_weight is None and budget is None
                 else np.zeros(len(choice), bool))
    return RouteResult(arm_index=choice, model=models, strategy=strategies,
                       probabilities=np.asarray(out["probabilities"]),
                       predicted_score=np.asarray(out["score"])[rows, choice],
                       expected_cost=np.asarray(out["cost"])[rows, choice],
                       malformed_greedy=malformed, cost_weight=used,
                       budget_met=budget_met)

  def summary(self) -> dict[str, Any]:
    return {"workdir_step": self.step, "arms": list(self.arm_names),
            "featurizer": self.description.get("featurizer"),
            "method": self.config.get("method"), "policy": self.config.policy.kind}


def load(workdir: str, **kwargs) -> Router:
  """Shorthand for `Router.load`."""
  return Router.load(workdir, **kwargs)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  raise TypeError(type(x))


def dumps(record: dict) -> str:
  return json.dumps(record, default=_json_default, sort_keys=False)
