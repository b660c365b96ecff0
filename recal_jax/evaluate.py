"""Routing metrics: quality, cost, cost-quality curves and their summaries.

Everything here runs on the host in numpy, over a `RoutingTable` (Q queries x
A arms) and a routing decision `choices [Q] int` (the arm picked per query).

Conventions (each is documented where it is used):

* A chosen arm with no logged outcome (`outcome_mask[q, c] == False`, e.g. a
  `null` score in a JSONL log: the arm was not run) scores 0; its cost is the
  mean logged cost of that arm on the table (so skipping the log never makes
  a router look cheaper). It is not a format failure: `format_ok_rate` is
  over the logged choices only. Such decisions are counted in
  `unlogged_choices`.
* Macro averages are plain means over the datasets present in the table (at
  least one query), so every dataset weighs the same whatever its size.
* Cost-quality curves are lists of `(cost, accuracy)` points. Summaries (AUC,
  cost to reach a target) are taken on the Pareto front of the points: a
  dominated operating point is never one a user would pick.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from recal_jax.data.table import RoutingTable

Point = tuple[float, float]  # (mean cost in USD per query, accuracy)

# Two utilities closer than this are a tie (then the cheaper arm wins).
_TIE_TOLERANCE = 1e-9


# ----------------------------------------------------------------- choices
def check_choices(table: RoutingTable, choices) -> np.ndarray:
  """`choices` as an int64 `[Q]` array, or a `ValueError` naming the problem."""
  choices = np.asarray(choices)
  if choices.shape != (table.num_queries,):
    raise ValueError(
        f"choices must have shape [num_queries] = [{table.num_queries}] for "
        f"table {table.name!r}, got shape {choices.shape}")
  if np.issubdtype(choices.dtype, np.floating):
    # Integral floats (e.g. from a jnp array) are accepted; fractions are not.
    if not np.all(np.isfinite(choices) & (choices == np.round(choices))):
      raise ValueError(f"choices must be integer arm indices, got non-integral "
                       f"values of dtype {choices.dtype}")
  elif not np.issubdtype(choices.dtype, np.integer):
    raise ValueError(f"choices must be integer arm indices, got dtype {choices.dtype}")
  choices = choices.astype(np.int64)
  bad = (choices < 0) | (choices >= table.num_arms)
  if bad.any():
    q = int(np.flatnonzero(bad)[0])
    raise ValueError(
        f"choices[{q}] = {choices[q]} (query {str(table.query_ids[q])!r}) is outside "
        f"[0, {table.num_arms}) arms of table {table.name!r}; "
        f"{int(bad.sum())} choice(s) out of range")
  return choices


def _chosen(table: RoutingTable, choices: np.ndarray):
  """Per-query score, cost, format_ok and logged flag of the chosen arms."""
  rows = np.arange(table.num_queries)
  logged = table.outcome_mask[rows, choices].astype(bool)
  mask = table.outcome_mask.astype(bool)
  # Mean logged cost per arm: stands in for the cost of an unlogged choice.
  arm_mean_cost = (np.where(mask, table.cost, 0).sum(0) /
                   np.maximum(mask.sum(0), 1))
  score = np.where(logged, table.score[rows, choices], 0.0).astype(np.float64)
  cost = np.where(logged, table.cost[rows, choices],
                  arm_mean_cost[choices]).astype(np.float64)
  format_ok = np.where(logged, table.format_ok[rows, choices],
                       0.0).astype(np.float64)
  return score, cost, format_ok, logged


def route_metrics(table: RoutingTable, choices) -> dict:
  """Quality and cost of routing query q to arm `choices[q]`.

  With s_q = score[q, c_q] and k_q = cost[q, c_q] for the chosen arm c_q:

    accuracy       = (1/Q) sum_q s_q
    cost           = (1/Q) sum_q k_q            (mean USD per query)
    format_ok_rate = mean of format_ok[q, c_q] over the queries whose chosen
                     arm is logged (1 when none is)
    macro_accuracy = (1/|D|) sum_{d present} mean_{q in d} s_q
    macro_cost     = (1/|D|) sum_{d present} mean_{q in d} k_q

  A chosen arm with no logged outcome counts as score 0, is left out of
  `format_ok_rate` (not run is not a format failure), and costs the arm's
  mean logged cost on this table; the number of such queries
  is returned as `unlogged_choices` (0 for a router that only picks logged
  arms).

  Args:
    table: the routing table (any split).
    choices: `[Q]` integer arm indices in `[0, A)`.

  Returns:
    dict with `num_queries`, `accuracy`, `cost`, `macro_accuracy`,
    `macro_cost`, `format_ok_rate`, `unlogged_choices`,
    `per_dataset` {dataset name: {accuracy, cost, num_queries}} (datasets
    present only) and `arm_distribution` {arm name: fraction of queries}
    (every arm, fractions sum to 1).

  Raises:
    ValueError: `choices` has the wrong shape, a non-integer dtype, or an
      index outside `[0, A)`; or the table has no queries.
  """
  choices = check_choices(table, choices)
  if table.num_queries == 0:
    raise ValueError(f"table {table.name!r} has no queries to evaluate")
  score, cost, format_ok, logged = _chosen(table, choices)
  per_dataset = {}
  for d, name in enumerate(table.dataset_names):
    rows = table.dataset_ids == d
    if rows.any():
      per_dataset[name] = {
          "accuracy": float(score[rows].mean()),
          "cost": float(cost[rows].mean()),
          "num_queries": int(rows.sum()),
      }
  counts = np.bincount(choices, minlength=table.num_arms)
  return {
      "num_queries": table.num_queries,
      "accuracy": float(score.mean()),
      "cost": float(cost.mean()),
      "macro_accuracy": float(np.mean([v["accuracy"] for v in per_dataset.values()])),
      "macro_cost": float(np.mean([v["cost"] for v in per_dataset.values()])),
      "format_ok_rate": float(format_ok[logged].mean()) if logged.any() else 1.0,
      "unlogged_choices": int((~logged).sum()),
      "per_dataset": per_dataset,
      "arm_distribution": {name: float(n) / table.num_queries
                           for name, n in zip(table.arm_names, counts)},
  }


# ------------------------------------------------------------ reference arms
def single_arm_metrics(table: RoutingTable) -> dict[str, dict]:
  """`route_metrics` of always picking each arm, keyed by arm name.

  Each entry also holds `arm` (its index) and `coverage` (fraction of queries
  where the arm was logged). Accuracy follows `route_metrics`: an unlogged
  query scores 0, so with partial logs this is below `table.mean_arm_score()`
  (which averages logged queries only).
  """
  out = {}
  for arm, name in enumerate(table.arm_names):
    metrics = route_metrics(table, np.full(table.num_queries, arm))
    metrics["arm"] = arm
    metrics["coverage"] = float(table.outcome_mask[:, arm].mean())
    out[name] = metrics
  return out


def _arm_means(table: RoutingTable) -> tuple[np.ndarray, np.ndarray]:
  """[A] accuracy and [A] cost of always choosing each arm (route_metrics rules)."""
  metrics = single_arm_metrics(table)
  accuracy = np.array([m["accuracy"] for m in metrics.values()])
  cost = np.array([m["cost"] for m in metrics.values()])
  return accuracy, cost


def _lexicographic_argmax(primary: np.ndarray, secondary: np.ndarray,
                          axis: int = -1) -> np.ndarray:
  """Arg max of `primary`; among near-ties (within 1e-9), arg max of `secondary`.

  Remaining ties go to the lowest index. Works on [A] or [Q, A].
  """
  best = np.max(primary, axis=axis, keepdims=True)
  tied = primary >= best - _TIE_TOLERANCE
  return np.argmax(np.where(tied, secondary, -np.inf), axis=axis)


def best_single_arm(table: RoutingTable, cost_weight: float = 0.0) -> int:
  """Arm maximising `accuracy - cost_weight * cost` over the whole table.

  Accuracy and cost are those of `single_arm_metrics`; ties go to the cheaper
  arm, then to the lower index.
  """
  accuracy, cost = _arm_means(table)
  return int(_lexicographic_argmax(accuracy - cost_weight * cost, -cost))


def cheapest_arm(table: RoutingTable) -> int:
  """Arm with the lowest mean cost per query; ties go to the higher accuracy."""
  accuracy, cost = _arm_means(table)
  return int(_lexicographic_argmax(-cost, accuracy))


def oracle_choices(table: RoutingTable, cost_weight: float = 0.0) -> np.ndarray:
  """[Q] per-query oracle: arg max_a score[q, a] - cost_weight * cost[q, a].

  Only logged arms are eligible; ties (within 1e-9) go to the lower cost, then
  to the lower arm index. With `cost_weight=0` this is the best score at the
  lowest cost that reaches it, so `route_metrics(...)["accuracy"]` equals
  `table.oracle_score()`. A query with no logged arm gets arm 0.
  """
  mask = table.outcome_mask.astype(bool)
  utility = np.where(mask, table.score - cost_weight * table.cost, -np.inf)
  cost = np.where(mask, table.cost, np.inf)
  return _lexicographic_argmax(utility, -cost).astype(np.int64)


def reference_points(table: RoutingTable) -> dict[str, dict]:
  """(cost, accuracy) of the cheapest arm, the best single arm and the oracle.

  Returns {"cheapest": {...}, "best_single": {...}, "oracle": {...}}, each
  with `accuracy`, `cost` and (for the two single arms) `arm` and `arm_name`.
  These are the anchors of `curve_summary`.
  """
  out = {}
  for key, arm in (("cheapest", cheapest_arm(table)),
                   ("best_single", best_single_arm(table))):
    m = route_metrics(table, np.full(table.num_queries, arm))
    out[key] = {"accuracy": m["accuracy"], "cost": m["cost"], "arm": arm,
                "arm_name": table.arm_names[arm]}
  m = route_metrics(table, oracle_choices(table))
  out["oracle"] = {"accuracy": m["accuracy"], "cost": m["cost"]}
  return out


# ------------------------------------------------------------------ curves
def cost_quality_curve(table: RoutingTable,
                       choose_fn: Callable[[float], np.ndarray],
                       cost_weights: Iterable[float]) -> list[Point]:
  """[(cost, accuracy)] of `route_metrics(table, choose_fn(w))` for each w.

  `choose_fn(cost_weight) -> [Q] choices` is typically
  `lambda w: router.choose(table, cost_weight=w)`. Points come back in the
  order of `cost_weights` (not sorted, not filtered).
  """
  points = []
  for weight in cost_weights:
    m = route_metrics(table, choose_fn(float(weight)))
    points.append((m["cost"], m["accuracy"]))
  return points


def _as_points(points: Iterable[Sequence[float]]) -> np.ndarray:
  """[P, 2] float64 array of (cost, accuracy) points, validated."""
  arr = np.asarray(list(points), dtype=np.float64)
  if arr.size == 0:
    raise ValueError("need at least one (cost, accuracy) point")
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(f"points must be (cost, accuracy) pairs, got shape {arr.shape}")
  if not np.isfinite(arr).all():
    raise ValueError(f"(cost, accuracy) points must be finite, got {arr.tolist()}")
  return arr


def pareto_front(points: Iterable[Sequence[float]]) -> list[Point]:
  """Non-dominated (cost, accuracy) points, sorted by increasing cost.

  A point is kept when no other point has cost <= and accuracy >= with one
  strict; duplicates collapse to one. Along the result both cost and accuracy
  strictly increase.
  """
  arr = _as_points(points)
  order = np.lexsort((-arr[:, 1], arr[:, 0]))  # cost up, then accuracy down
  front, best_accuracy = [], -np.inf
  for cost, accuracy in arr[order]:
    if accuracy > best_accuracy:
      front.append((float(cost), float(accuracy)))
      best_accuracy = accuracy
  return front


def _curve_value(front: np.ndarray, costs: np.ndarray, interpolation: str) -> np.ndarray:
  """Accuracy of the front at `costs`, flat outside its cost range."""
  if interpolation == "linear":
    return np.interp(costs, front[:, 0], front[:, 1])
  if interpolation == "step":
    # Best accuracy among front points with cost <= c (the first one below).
    index = np.searchsorted(front[:, 0], costs, side="right") - 1
    return front[np.maximum(index, 0), 1]
  raise ValueError(f"interpolation must be 'linear' or 'step', got {interpolation!r}")


def area_under_curve(points: Iterable[Sequence[float]], cost_low: float,
                     cost_high: float, interpolation: str = "linear") -> float:
  """Mean accuracy of the cost-quality curve over `[cost_low, cost_high]`.

    AUC = 1 / (cost_high - cost_low) * integral_{cost_low}^{cost_high} acc(c) dc

  where acc(c) is the Pareto front of `points` (see `pareto_front`), joined
  linearly between points (`interpolation='linear'`) or held at the last point
  at or below c (`'step'`). Outside the front's cost range acc(c) is extended
  flat (the cheapest point's accuracy below it, the best accuracy above it).
  The usual window is from the cheapest arm's cost to the best single arm's
  cost (see `curve_summary`), so the result is in accuracy units and a router
  that matches the best single arm at every budget scores its accuracy.
  With `cost_high == cost_low` it is acc(cost_low).

  Raises:
    ValueError: no points, non-finite values, `cost_high < cost_low`, or an
      unknown `interpolation`.
  """
  front = np.asarray(pareto_front(points))
  cost_low, cost_high = float(cost_low), float(cost_high)
  if not (math.isfinite(cost_low) and math.isfinite(cost_high)) or cost_high < cost_low:
    raise ValueError(
        f"need finite cost_low <= cost_high, got [{cost_low}, {cost_high}]")
  if cost_high == cost_low:
    return float(_curve_value(front, np.array([cost_low]), interpolation)[0])
  inner = front[(front[:, 0] > cost_low) & (front[:, 0] < cost_high), 0]
  knots = np.concatenate([[cost_low], inner, [cost_high]])
  widths = np.diff(knots)
  if interpolation == "linear":
    # Piecewise linear between knots: the trapezoid rule is exact.
    values = _curve_value(front, knots, "linear")
    area = np.sum(widths * (values[1:] + values[:-1]) / 2)
  else:
    # Constant on [knot_i, knot_{i+1}): the value at the left knot.
    area = np.sum(widths * _curve_value(front, knots[:-1], interpolation))
  return float(area / (cost_high - cost_low))


def cost_to_reach(points: Iterable[Sequence[float]], target_accuracy: float,
                  interpolation: str = "linear") -> float:
  """Lowest cost at which the cost-quality curve reaches `target_accuracy`.

  On the Pareto front of `points` (cost and accuracy both increasing):
  with `'step'` it is the cost of the first point with accuracy >= target;
  with `'linear'` the cost where the segment into that point crosses the
  target (mixing the two neighbouring operating points at random realises
  it). No extension below the cheapest point: if it already reaches the
  target, its cost is returned. `math.inf` if no point reaches the target.
  The usual target is the best single arm's accuracy (`curve_summary`).
  """
  front = np.asarray(pareto_front(points))
  target = float(target_accuracy)
  reached = np.flatnonzero(front[:, 1] >= target - _TIE_TOLERANCE)
  if reached.size == 0:
    return math.inf
  i = int(reached[0])
  if i == 0 or interpolation == "step":
    return float(front[i, 0])
  if interpolation != "linear":
    raise ValueError(f"interpolation must be 'linear' or 'step', got {interpolation!r}")
  (c0, a0), (c1, a1) = front[i - 1], front[i]
  return float(c0 + (c1 - c0) * (target - a0) / (a1 - a0))


def apgr(accuracy: float, cheapest_accuracy: float, oracle_accuracy: float) -> float:
  """Share of the cheapest-to-oracle gap recovered: (acc - cheap) / (oracle - cheap).

  1 means oracle quality, 0 the cheapest arm's, negative worse than it. Returns
  NaN when the oracle does not beat the cheapest arm (no gap to recover).
  """
  gap = float(oracle_accuracy) - float(cheapest_accuracy)
  if gap <= 0:
    return math.nan
  return (float(accuracy) - float(cheapest_accuracy)) / gap


def curve_summary(table: RoutingTable, points: Iterable[Sequence[float]],
                  interpolation: str = "linear") -> dict:
  """AUC, cost to reach the best single arm and APGR of a curve on `table`.

  Returns a dict with
    auc: `area_under_curve` between the cheapest arm's cost and the best
      single arm's cost;
    max_accuracy / cost_at_max: the best point of the curve;
    apgr: `apgr` of max_accuracy against the cheapest arm and the oracle;
    cost_to_best_single: `cost_to_reach` of the best single arm's accuracy;
    cost_saving: 1 - cost_to_best_single / best single arm cost (NaN if the
      curve never reaches it or the best single arm is free).
  """
  ref = reference_points(table)
  front = pareto_front(points)
  cost_low = min(ref["cheapest"]["cost"], ref["best_single"]["cost"])
  cost_high = max(ref["cheapest"]["cost"], ref["best_single"]["cost"])
  reach = cost_to_reach(front, ref["best_single"]["accuracy"], interpolation)
  best_cost = ref["best_single"]["cost"]
  return {
      "auc": area_under_curve(front, cost_low, cost_high, interpolation),
      "max_accuracy": front[-1][1],
      "cost_at_max": front[-1][0],
      "apgr": apgr(front[-1][1], ref["cheapest"]["accuracy"], ref["oracle"]["accuracy"]),
      "cost_to_best_single": reach,
      "cost_saving": (1 - reach / best_cost
                      if math.isfinite(reach) and best_cost > 0 else math.nan),
  }


# ------------------------------------------------------------------ tables
def _format_cell(value, float_format: str) -> str:
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (float, np.floating)):
    return float_format.format(float(value)) if math.isfinite(value) else str(float(value))
  return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                 float_format: str = "{:.3f}") -> str:
  """A markdown table of `rows` (dicts), one row per dict.

  Columns are `columns`, or else every key in order of first appearance;
  missing cells are blank; floats use `float_format`; numeric columns are
  right-aligned. Returns "" for no rows.
  """
  rows = list(rows)
  if not rows:
    return ""
  if columns is None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
  body = [[_format_cell(row[c], float_format) if c in row and row[c] is not None
           else "" for c in columns] for row in rows]
  numeric = [all(isinstance(row.get(c), (int, float, np.number)) and
                 not isinstance(row.get(c), bool) for row in rows if c in row)
             for c in columns]
  header = "| " + " | ".join(map(str, columns)) + " |"
  rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
  lines = ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join([header, rule, *lines])
