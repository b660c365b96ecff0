"""Evaluation during and after training: greedy routes -> routing metrics.

`Evaluator(table, greedy_step, ...)(params)` routes every query of a split
greedily and returns `routing_metrics` (accuracy, cost, per dataset, format
rate, malformed rate) plus the method's validation reward; `summarize` keeps
the scalars worth logging; `comparison_rows` is the final table (router, best
single arm chosen on train, per-query oracle).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from absl import logging
import jax
from jax.sharding import NamedSharding
import numpy as np

from recal_jax import advantage
from recal_jax import evaluate
from recal_jax.data import table as table_lib


def routing_metrics(table: table_lib.RoutingTable, choices: np.ndarray) -> dict:
  """`evaluate.route_metrics`, extended to malformed routes (choice -1).

  A malformed route calls no model: it scores 0, costs 0 and fails the format.
  Adds `malformed_rate`. With no malformed route this is exactly
  `evaluate.route_metrics` (plus `malformed_rate = 0`).
  """
  choices = np.asarray(choices).astype(np.int64)
  well_formed = choices >= 0
  if well_formed.all():
    return dict(evaluate.route_metrics(table, choices), malformed_rate=0.0)
  num_queries = table.num_queries
  fraction = well_formed.mean()
  per_dataset = {}
  part = (evaluate.route_metrics(table.take(well_formed), choices[well_formed])
          if well_formed.any() else None)
  for d, name in enumerate(table.dataset_names):
    rows = table.dataset_ids == d
    if not rows.any():
      continue
    inside = part["per_dataset"].get(name) if part else None
    share = (inside["num_queries"] / rows.sum()) if inside else 0.0
    per_dataset[name] = {
        "accuracy": inside["accuracy"] * share if inside else 0.0,
        "cost": inside["cost"] * share if inside else 0.0,
        "num_queries": int(rows.sum())}
  counts = np.bincount(choices[well_formed], minlength=table.num_arms)
  return {
      "num_queries": num_queries,
      "accuracy": part["accuracy"] * fraction if part else 0.0,
      "cost": part["cost"] * fraction if part else 0.0,
      "macro_accuracy": float(np.mean([v["accuracy"] for v in per_dataset.values()])),
      "macro_cost": float(np.mean([v["cost"] for v in per_dataset.values()])),
      "format_ok_rate": part["format_ok_rate"] * fraction if part else 0.0,
      "unlogged_choices": part["unlogged_choices"] if part else 0,
      "per_dataset": per_dataset,
      "arm_distribution": {name: float(n) / num_queries
                           for name, n in zip(table.arm_names, counts)},
      "malformed_rate": float(1.0 - fraction),
  }


def validation_reward(metrics: Mapping[str, float], method: advantage.ReCalConfig,
                      cost_scale: float) -> float:
  """The summed reward of greedy routes, averaged over queries.

    reward = w_format * format_ok_rate + w_correct * accuracy
             - w_cost * cost / cost_scale

  with the method's `component_weights` (the training reward's units).
  """
  w_format, w_correct, w_cost = method.weight_vector()
  return float(w_format * metrics["format_ok_rate"] + w_correct * metrics["accuracy"]
               - w_cost * metrics["cost"] / cost_scale)


def summarize(metrics: Mapping, prefix: str) -> dict[str, float]:
  """Scalars of `routing_metrics` worth logging every evaluation."""
  keys = ("accuracy", "cost", "macro_accuracy", "macro_cost", "format_ok_rate",
          "malformed_rate", "reward")
  out = {f"{prefix}/{k}": float(metrics[k]) for k in keys if k in metrics}
  for name, values in metrics.get("per_dataset", {}).items():
    out[f"{prefix}/per_dataset/{name}/accuracy"] = float(values["accuracy"])
    out[f"{prefix}/per_dataset/{name}/cost"] = float(values["cost"])
  return out


class Evaluator:
  """Greedy routes of a policy on one split -> `routing_metrics` (+ reward)."""

  def __init__(self, table: table_lib.RoutingTable, greedy_step: Callable,
               method: advantage.ReCalConfig, cost_scale: float,
               sharding: NamedSharding):
    self.table = table
    self.greedy_step = greedy_step
    self.method = method
    self.cost_scale = cost_scale
    self.features = jax.device_put(np.asarray(table.features, np.float32), sharding)

  def __call__(self, params) -> dict:
    choices = np.asarray(jax.device_get(self.greedy_step(params, self.features)))
    metrics = routing_metrics(self.table, choices)
    metrics["reward"] = validation_reward(metrics, self.method, self.cost_scale)
    return metrics


def reference_metrics(train: table_lib.RoutingTable,
                      splits: Mapping[str, table_lib.RoutingTable]) -> dict:
  """Best single arm (chosen on train) and per-query oracle on each split."""
  best_arm = evaluate.best_single_arm(train)
  out = {"best_single_arm": train.arm_names[best_arm]}
  for split, table in splits.items():
    if table.num_queries == 0:
      continue
    single = evaluate.route_metrics(table, np.full(table.num_queries, best_arm))
    oracle = evaluate.route_metrics(table, evaluate.oracle_choices(table))
    for name, m in (("best_single", single), ("oracle", oracle)):
      out[f"{name}/{split}/accuracy"] = m["accuracy"]
      out[f"{name}/{split}/cost"] = m["cost"]
  return out


def final_metrics(splits: Mapping[str, table_lib.RoutingTable], greedy_step: Callable,
                  method: advantage.ReCalConfig, config, *, step: int, last_params,
                  best_step: int, best_params, sharding: NamedSharding) -> dict:
  """The end-of-run metrics of `train_and_evaluate` (and of `training.seeds`).

  'step', 'best_step', 'final/<split>/<stat>' (`last_params`),
  'router/<split>/<stat>' (`best_params`, the best on validation) and the
  `reference_metrics` of every split but train that has queries.
  """
  result: dict[str, Any] = {"step": step, "best_step": best_step}
  evaluators = {split: Evaluator(t, greedy_step, method, config.cost_scale, sharding)
                for split, t in splits.items() if split != "train" and t.num_queries > 0}
  for prefix, params in (("final", last_params), ("router", best_params)):
    for split, evaluator in evaluators.items():
      summary = summarize(evaluator(params), split)
      result.update({f"{prefix}/{k}": v for k, v in summary.items()})
  result.update(reference_metrics(splits["train"], {s: splits[s] for s in evaluators}))
  if best_step == 0 and step > 0:
    logging.warning("The best checkpoint on %s is the untrained step 0: the %d "
                    "training steps never beat the initial policy", config.best_metric, step)
  return result


def comparison_rows(final: Mapping[str, Any], splits=("validation", "test")) -> list[dict]:
  """Rows (router, best single arm, oracle) x (accuracy, cost) per split.

  When the best checkpoint on validation is the untrained step 0 (training
  never beat the initial policy), the router row says so.
  """
  rows = []
  router = "trained router"
  if final.get("best_step") == 0:
    router = "UNTRAINED router (best checkpoint is step 0: training never beat it)"
  names = (("router", router),
           ("best_single", f"best single arm ({final.get('best_single_arm', '?')})"),
           ("oracle", "per-query oracle"))
  for key, label in names:
    row = {"policy": label}
    for split in splits:
      for stat in ("accuracy", "cost"):
        value = final.get(f"{key}/{split}/{stat}")
        if value is not None:
          row[f"{split} {stat}" + (" (USD)" if stat == "cost" else "")] = value
    rows.append(row)
  return rows
