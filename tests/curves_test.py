"""Tests for recal_jax.curves against hand-computed sweeps, AUCs and read-offs."""

import math

import numpy as np
import pytest

from recal_jax import baselines
from recal_jax import curves
from recal_jax.data import make_synthetic
from recal_jax.data.table import RoutingTable


def two_arm_table() -> RoutingTable:
  """4 queries x 2 arms: cheap (cost 1) right on q0 only; big (cost 3) on q0-q2.

  Always cheap: accuracy 0.25 at cost 1; always big: 0.75 at cost 3 (the best
  single arm).
  """
  score = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], np.float32)
  return RoutingTable(
      name="two_arm", query_ids=np.array(["q0", "q1", "q2", "q3"]),
      texts=np.array(["w", "x", "y", "z"], dtype=object),
      features=np.zeros((4, 1), np.float32), dataset_ids=np.zeros(4, np.int32),
      dataset_names=("a",), arm_models=("cheap", "big"), arm_strategies=("direct",) * 2,
      input_price=np.ones(2, np.float32), output_price=np.ones(2, np.float32),
      score=score, format_ok=np.ones_like(score),
      cost=np.tile(np.array([1.0, 3.0], np.float32), (4, 1)), tokens=np.zeros_like(score),
      outcome_mask=np.ones(score.shape, bool), split=np.zeros(4, np.int8)).validate()


# The router prefers big by 2 * lambda less than: q0 -0.8, q1 0.6, q2 0.1, q3 0.4.
SCORES = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.6], [0.5, 0.9]])
COST = np.tile([1.0, 3.0], (4, 1))


def test_sweep_by_hand():
  choices = curves.sweep_choices(SCORES, COST, [0.0, 0.1, 0.25, 0.3, 1.0])
  np.testing.assert_array_equal(choices, [[0, 1, 1, 1], [0, 1, 0, 1], [0, 1, 0, 0],
                                          [0, 0, 0, 0],  # q1 ties at 0.3: the cheaper arm
                                          [0, 0, 0, 0]])
  points = curves.sweep(two_arm_table(), SCORES, COST, [0.0, 0.1, 0.25, 1.0])
  np.testing.assert_allclose(points, [(2.5, 0.75), (2.0, 0.5), (1.5, 0.5), (1.0, 0.25)])


def test_accuracy_at_cost_on_the_front():
  points = [(2.5, 0.75), (2.0, 0.5), (1.5, 0.5), (1.0, 0.25)]  # (2, 0.5) is dominated
  assert curves.accuracy_at_cost(points, 1.25) == pytest.approx(0.375)
  assert curves.accuracy_at_cost(points, 2.0) == pytest.approx(0.625)
  assert curves.accuracy_at_cost(points, 3.0) == pytest.approx(0.75)  # flat above
  assert math.isnan(curves.accuracy_at_cost(points, 0.5))  # cheaper than any point


def test_curve_report_by_hand():
  points = curves.sweep(two_arm_table(), SCORES, COST, [0.0, 0.1, 0.25, 1.0])
  report = curves.curve_report(two_arm_table(), points)
  # Front (1, .25), (1.5, .5), (2.5, .75) on [1, 3]:
  # (0.5 * 0.375 + 1 * 0.625 + 0.5 * 0.75) / 2 = 0.59375.
  assert report["auc"] == pytest.approx(0.59375)
  assert report["acc_at_best_cost"] == pytest.approx(0.75)
  assert report["acc_at_half_best_cost"] == pytest.approx(0.5)
  assert report["best_single_cost"] == 3.0 and report["cheapest_cost"] == 1.0
  np.testing.assert_allclose(report["curve"], [(1.0, 0.25), (1.5, 0.5), (2.5, 0.75)])
  # On the shared grid (0, then >= 1) only the two ends are left: a straight line.
  coarse = curves.curve_report(two_arm_table(), curves.sweep(two_arm_table(), SCORES, COST))
  assert coarse["auc"] == pytest.approx((1.5 * 0.5 + 0.5 * 0.75) / 2)


def test_sweep_is_router_choose_at_every_weight():
  table = make_synthetic(600, seed=1)
  train, test = table.subset("train"), table.subset("test")
  router = baselines.CategoryBestRouter().fit(train)
  weights = curves.COST_WEIGHTS[::5]
  swept = curves.sweep_choices(router.predict_scores(test), router.expected_cost(test), weights)
  for w, choices in zip(weights, swept):
    np.testing.assert_array_equal(choices, router.choose(test, cost_weight=w))


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"\[Q, A\]"):
    curves.sweep_choices(SCORES, COST[:, :1])
  with pytest.raises(ValueError, match="finite"):
    curves.sweep_choices(np.full((4, 2), np.nan), COST)
  with pytest.raises(ValueError, match=">= 0"):
    curves.sweep_choices(SCORES, COST, [-1.0])
