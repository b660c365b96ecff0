"""Cost-quality curves of routers with a cost knob, and what to read off them.

Every router here ranks the arms of query q by a score s[q, a] (a predicted
score, or a policy's log-probability) and an expected cost c[q, a] (USD), and
trades them off with one cost weight lambda >= 0:

  c_q(lambda) = arg max_a  s[q, a] - lambda * c[q, a]

(ties within 1e-9 go to the lower expected cost, then to the lower arm index,
as `baselines.Router.choose`). Sweeping lambda over one shared grid
(`COST_WEIGHTS`) traces the router's cost-quality curve: the points
(mean cost, accuracy) of `evaluate.route_metrics` on a table. The grid spans
0 and 1 .. 1e9 (log-spaced): scores in accuracy units and log-probabilities in
nats both move to the cheapest expected arm well before its top, since per-
query costs are 1e-6 .. 1e-1 USD.

Read off a curve (`curve_report`), on the Pareto front of its points
(`evaluate.pareto_front`), joined linearly (mixing two neighbouring operating
points at random realises every point between them):

  auc          = evaluate.area_under_curve between the cheapest arm's and the
                 best single arm's cost on that table (the project's AUC);
  acc_at(c)    = front accuracy at cost c, linear between front points, the
                 best front accuracy above the front's top cost, NaN below its
                 lowest cost (no operating point is that cheap);
  acc_at_best_cost      = acc_at(cost of the best single arm),
  acc_at_half_best_cost = acc_at(cost of the best single arm / 2).

Everything is numpy on the host.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from recal_jax import evaluate
from recal_jax.data.table import RoutingTable

# The shared lambda grid: 0 and 5 log-spaced values per decade in [1, 1e9].
COST_WEIGHTS = np.concatenate([[0.0], np.logspace(0, 9, 46)])


def sweep_choices(scores: np.ndarray, expected_cost: np.ndarray,
                  cost_weights: Iterable[float] = COST_WEIGHTS) -> np.ndarray:
  """[L, Q] arg max_a scores[q, a] - lambda_l * expected_cost[q, a] per weight.

  Args:
    scores: [Q, A] what the router maximises at lambda = 0 (finite).
    expected_cost: [Q, A] the router's expected USD cost of each arm (finite).
    cost_weights: L weights lambda >= 0.

  Ties (within 1e-9) go to the lower expected cost, then to the lower index.
  """
  scores = np.asarray(scores, np.float64)
  expected_cost = np.asarray(expected_cost, np.float64)
  if scores.shape != expected_cost.shape or scores.ndim != 2:
    raise ValueError(f"scores and expected_cost must both be [Q, A], got {scores.shape} "
                     f"and {expected_cost.shape}")
  if not (np.isfinite(scores).all() and np.isfinite(expected_cost).all()):
    raise ValueError("scores and expected_cost must be finite")
  weights = np.asarray(list(cost_weights), np.float64)
  if weights.ndim != 1 or not (np.isfinite(weights).all() and (weights >= 0).all()):
    raise ValueError(f"cost_weights must be finite and >= 0, got {weights}")
  return np.stack([
      evaluate._lexicographic_argmax(  # pylint: disable=protected-access
          scores - w * expected_cost, -expected_cost) for w in weights]).astype(np.int64)


def sweep(table: RoutingTable, scores: np.ndarray, expected_cost: np.ndarray,
          cost_weights: Iterable[float] = COST_WEIGHTS) -> list[evaluate.Point]:
  """[(cost, accuracy)] on `table` of `sweep_choices`, one point per weight (in order)."""
  points = []
  for choices in sweep_choices(scores, expected_cost, cost_weights):
    m = evaluate.route_metrics(table, choices)
    points.append((m["cost"], m["accuracy"]))
  return points


def accuracy_at_cost(points: Iterable[Sequence[float]], cost: float) -> float:
  """Accuracy of the curve's Pareto front at `cost` (see the module docstring).

  Linear between front points; the best front accuracy at or above the front's
  highest cost; NaN below its lowest cost.
  """
  front = np.asarray(evaluate.pareto_front(points))
  cost = float(cost)
  if not math.isfinite(cost):
    raise ValueError(f"cost must be finite, got {cost}")
  if cost < front[0, 0]:
    return math.nan
  return float(np.interp(cost, front[:, 0], front[:, 1]))


def curve_report(table: RoutingTable, points: Iterable[Sequence[float]]) -> dict:
  """AUC and accuracies at the best single arm's cost and half of it, on `table`.

  Returns {auc, acc_at_best_cost, acc_at_half_best_cost, best_single_cost,
  cheapest_cost, curve}: `curve` is the Pareto front as [[cost, accuracy]];
  the anchors are `evaluate.reference_points(table)` (best single and cheapest
  arm on this table).
  """
  points = [tuple(map(float, p)) for p in points]
  ref = evaluate.reference_points(table)
  best, cheapest = ref["best_single"]["cost"], ref["cheapest"]["cost"]
  return {
      "auc": evaluate.curve_summary(table, points)["auc"],
      "acc_at_best_cost": accuracy_at_cost(points, best),
      "acc_at_half_best_cost": accuracy_at_cost(points, best / 2),
      "best_single_cost": best,
      "cheapest_cost": cheapest,
      "curve": [list(p) for p in evaluate.pareto_front(points)],
  }
