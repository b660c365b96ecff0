"""Tests for recal_jax.evaluate against hand-computed values."""

import dataclasses
import math

import numpy as np
import pytest

from recal_jax import evaluate
from recal_jax.data.table import RoutingTable


def hand_table(outcome_mask=None) -> RoutingTable:
  """3 queries x 2 arms; datasets a = {q0, q1}, b = {q2}.

            score        cost       format_ok
    q0   [1.0, 0.0]   [1.0, 3.0]   [1, 1]
    q1   [0.0, 1.0]   [1.0, 3.0]   [0, 1]
    q2   [0.5, 1.0]   [2.0, 4.0]   [1, 1]
  """
  if outcome_mask is None:
    outcome_mask = np.ones((3, 2), bool)
  return RoutingTable(
      name="hand",
      query_ids=np.array(["q0", "q1", "q2"]),
      texts=np.array(["x", "y", "z"], dtype=object),
      features=np.zeros((3, 0), np.float32),
      dataset_ids=np.array([0, 0, 1], np.int32),
      dataset_names=("a", "b"),
      arm_models=("small", "big"),
      arm_strategies=("direct", "direct"),
      input_price=np.ones(2, np.float32),
      output_price=np.ones(2, np.float32),
      score=np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0]], np.float32),
      format_ok=np.array([[1, 1], [0, 1], [1, 1]], np.float32),
      cost=np.array([[1.0, 3.0], [1.0, 3.0], [2.0, 4.0]], np.float32),
      tokens=np.zeros((3, 2), np.float32),
      outcome_mask=np.asarray(outcome_mask, bool),
      split=np.zeros(3, np.int8),
  ).validate()


# Curve used by the AUC / cost-to-reach tests; (3, 0.8) is dominated by (2, 0.9).
POINTS = [(4.0, 1.0), (1.0, 0.5), (3.0, 0.8), (2.0, 0.9)]
FRONT = [(1.0, 0.5), (2.0, 0.9), (4.0, 1.0)]


class TestRouteMetrics:

  def test_hand_values(self):
    m = evaluate.route_metrics(hand_table(), [0, 0, 1])
    # scores of the chosen arms: q0 -> 1.0, q1 -> 0.0, q2 -> 1.0; mean 2/3.
    assert m["accuracy"] == pytest.approx(2 / 3)
    # costs: 1 + 1 + 4 = 6, / 3 = 2.
    assert m["cost"] == pytest.approx(2.0)
    # format_ok: 1, 0, 1.
    assert m["format_ok_rate"] == pytest.approx(2 / 3)
    # a: acc (1 + 0) / 2 = 0.5, cost (1 + 1) / 2 = 1; b: acc 1, cost 4.
    assert m["per_dataset"] == {
        "a": {"accuracy": pytest.approx(0.5), "cost": pytest.approx(1.0), "num_queries": 2},
        "b": {"accuracy": pytest.approx(1.0), "cost": pytest.approx(4.0), "num_queries": 1},
    }
    # macro: (0.5 + 1) / 2 = 0.75, (1 + 4) / 2 = 2.5.
    assert m["macro_accuracy"] == pytest.approx(0.75)
    assert m["macro_cost"] == pytest.approx(2.5)
    assert m["arm_distribution"] == {"small|direct": pytest.approx(2 / 3),
                                     "big|direct": pytest.approx(1 / 3)}
    assert m["unlogged_choices"] == 0
    assert m["num_queries"] == 3

  def test_macro_skips_absent_datasets(self):
    # Only dataset a present: macro == its values.
    m = evaluate.route_metrics(hand_table().take(np.array([0, 1])), [0, 1])
    assert list(m["per_dataset"]) == ["a"]
    assert m["macro_accuracy"] == pytest.approx(1.0)  # (1 + 1) / 2
    assert m["macro_cost"] == pytest.approx(2.0)  # (1 + 3) / 2

  def test_unlogged_choice_scores_zero(self):
    mask = np.array([[1, 1], [1, 1], [0, 1]], bool)
    m = evaluate.route_metrics(hand_table(mask), [0, 0, 0])
    # q2 picks the unlogged arm 0: score 0, cost = arm 0's mean logged cost
    # (1 + 1) / 2 = 1, and no format failure (the arm was not run): the format
    # rate is over the logged choices q0 (1) and q1 (0).  accuracy (1 + 0 + 0) / 3.
    assert m["unlogged_choices"] == 1
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["format_ok_rate"] == pytest.approx(1 / 2)
    assert m["cost"] == pytest.approx(1.0)

  def test_integral_floats_accepted(self):
    m = evaluate.route_metrics(hand_table(), np.array([0.0, 0.0, 1.0]))
    assert m["accuracy"] == pytest.approx(2 / 3)

  @pytest.mark.parametrize("choices, message", [
      ([0, 1], r"shape \[num_queries\] = \[3\].*got shape \(2,\)"),
      ([[0], [1], [0]], r"shape \[num_queries\] = \[3\].*\(3, 1\)"),
      ([0, 2, 0], r"choices\[1\] = 2 \(query 'q1'\) is outside \[0, 2\)"),
      ([-1, 0, 0], r"choices\[0\] = -1"),
      ([0, 0.5, 1], r"integer arm indices"),
      (["a", "b", "c"], r"integer arm indices"),
  ])
  def test_bad_choices(self, choices, message):
    with pytest.raises(ValueError, match=message):
      evaluate.route_metrics(hand_table(), choices)


class TestReferenceArms:

  def test_single_arms(self):
    single = evaluate.single_arm_metrics(hand_table())
    # arm 0: (1 + 0 + 0.5) / 3 = 0.5, cost (1 + 1 + 2) / 3 = 4/3.
    assert single["small|direct"]["accuracy"] == pytest.approx(0.5)
    assert single["small|direct"]["cost"] == pytest.approx(4 / 3)
    # arm 1: (0 + 1 + 1) / 3 = 2/3, cost (3 + 3 + 4) / 3 = 10/3.
    assert single["big|direct"]["accuracy"] == pytest.approx(2 / 3)
    assert single["big|direct"]["cost"] == pytest.approx(10 / 3)
    assert single["big|direct"]["coverage"] == 1.0
    assert evaluate.cheapest_arm(hand_table()) == 0
    assert evaluate.best_single_arm(hand_table()) == 1
    # With cost weight 0.1: 0.5 - 0.133 = 0.367 > 0.667 - 0.333 = 0.333.
    assert evaluate.best_single_arm(hand_table(), cost_weight=0.1) == 0

  def test_best_single_tie_goes_to_cheaper(self):
    table = hand_table()
    score = table.score.copy()
    score[2] = [1.0, 1.0]  # both arms now average 2/3
    table = dataclasses.replace(table, score=score)
    assert evaluate.best_single_arm(table) == 0

  def test_oracle(self):
    table = hand_table()
    np.testing.assert_array_equal(evaluate.oracle_choices(table), [0, 1, 1])
    m = evaluate.route_metrics(table, evaluate.oracle_choices(table))
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(table.oracle_score())
    assert m["cost"] == pytest.approx(8 / 3)  # (1 + 3 + 4) / 3
    # cost weight 0.3: q2 0.5 - 0.6 = -0.1 > 1 - 1.2 = -0.2 -> arm 0;
    # q1 0 - 0.3 < 1 - 0.9 -> arm 1.
    np.testing.assert_array_equal(evaluate.oracle_choices(table, 0.3), [0, 1, 0])
    # cost weight 0.25: q2 ties at 0 (0.5 - 0.5 = 1 - 1); the cheaper arm 0 wins.
    np.testing.assert_array_equal(evaluate.oracle_choices(table, 0.25), [0, 1, 0])

  def test_oracle_skips_unlogged(self):
    mask = np.array([[0, 1], [1, 1], [1, 1]], bool)
    np.testing.assert_array_equal(evaluate.oracle_choices(hand_table(mask)), [1, 1, 1])

  def test_reference_points(self):
    ref = evaluate.reference_points(hand_table())
    assert ref["cheapest"]["arm"] == 0
    assert ref["best_single"]["arm_name"] == "big|direct"
    assert ref["oracle"]["accuracy"] == pytest.approx(1.0)


class TestCurves:

  def test_cost_quality_curve(self):
    table = hand_table()
    points = evaluate.cost_quality_curve(
        table, lambda w: evaluate.oracle_choices(table, w), [0.0, 0.3])
    # w = 0: choices [0, 1, 1] -> (8/3, 1); w = 0.3: [0, 1, 0] ->
    # cost (1 + 3 + 2) / 3 = 2, accuracy (1 + 1 + 0.5) / 3 = 5/6.
    np.testing.assert_allclose(points, [(8 / 3, 1.0), (2.0, 5 / 6)])

  def test_pareto_front(self):
    assert evaluate.pareto_front(POINTS) == FRONT
    # Duplicates and equal-cost points collapse to the best one.
    assert evaluate.pareto_front([(1, 0.5), (1, 0.6), (1, 0.6), (2, 0.6)]) == [(1.0, 0.6)]
    with pytest.raises(ValueError, match="at least one"):
      evaluate.pareto_front([])
    with pytest.raises(ValueError, match="finite"):
      evaluate.pareto_front([(1.0, math.nan)])

  def test_auc_linear(self):
    # Front (1, .5) (2, .9) (4, 1): trapezoids (.5 + .9) / 2 * 1 = 0.7 and
    # (.9 + 1) / 2 * 2 = 1.9; (0.7 + 1.9) / (4 - 1) = 2.6 / 3.
    assert evaluate.area_under_curve(POINTS, 1, 4) == pytest.approx(2.6 / 3)
    # Flat extension: [0, 1] at 0.5 and [4, 5] at 1.0: (0.5 + 2.6 + 1) / 5.
    assert evaluate.area_under_curve(POINTS, 0, 5) == pytest.approx(4.1 / 5)
    # Inner window [1.5, 3]: acc(1.5) = .7, acc(2) = .9, acc(3) = .95;
    # (.7 + .9) / 2 * .5 + (.9 + .95) / 2 * 1 = 0.4 + 0.925 = 1.325; / 1.5.
    assert evaluate.area_under_curve(POINTS, 1.5, 3) == pytest.approx(1.325 / 1.5)
    # Zero-width window: the curve's value there.
    assert evaluate.area_under_curve(POINTS, 2, 2) == pytest.approx(0.9)

  def test_auc_step(self):
    # [1, 2) at 0.5, [2, 4) at 0.9: (0.5 + 1.8) / 3.
    assert evaluate.area_under_curve(POINTS, 1, 4, "step") == pytest.approx(2.3 / 3)

  def test_auc_errors(self):
    with pytest.raises(ValueError, match="cost_low <= cost_high"):
      evaluate.area_under_curve(POINTS, 4, 1)
    with pytest.raises(ValueError, match="interpolation"):
      evaluate.area_under_curve(POINTS, 1, 4, "spline")

  def test_cost_to_reach(self):
    # 0.7 lies between (1, .5) and (2, .9): 1 + (0.7 - 0.5) / 0.4 = 1.5.
    assert evaluate.cost_to_reach(POINTS, 0.7) == pytest.approx(1.5)
    assert evaluate.cost_to_reach(POINTS, 0.7, "step") == pytest.approx(2.0)
    assert evaluate.cost_to_reach(POINTS, 0.5) == pytest.approx(1.0)
    assert evaluate.cost_to_reach(POINTS, 0.1) == pytest.approx(1.0)  # no extension below
    assert evaluate.cost_to_reach(POINTS, 1.0) == pytest.approx(4.0)
    assert evaluate.cost_to_reach(POINTS, 1.01) == math.inf

  def test_apgr(self):
    # (0.75 - 0.5) / (1.0 - 0.5) = 0.5
    assert evaluate.apgr(0.75, 0.5, 1.0) == pytest.approx(0.5)
    assert evaluate.apgr(1.0, 0.5, 1.0) == pytest.approx(1.0)
    assert evaluate.apgr(0.25, 0.5, 1.0) == pytest.approx(-0.5)
    assert math.isnan(evaluate.apgr(0.5, 0.5, 0.5))

  def test_curve_summary(self):
    table = hand_table()
    # Window [4/3, 10/3] (cheapest arm 0 to best single arm 1). Curve:
    # (2, 5/6) and (8/3, 1), flat outside: acc 5/6 on [4/3, 2], linear to 1 at
    # 8/3, then 1 to 10/3. Area = 5/6 * 2/3 + (5/6 + 1)/2 * 2/3 + 1 * 2/3.
    points = [(8 / 3, 1.0), (2.0, 5 / 6)]
    area = 5 / 6 * 2 / 3 + (5 / 6 + 1) / 2 * 2 / 3 + 2 / 3
    summary = evaluate.curve_summary(table, points)
    assert summary["auc"] == pytest.approx(area / 2)
    assert summary["max_accuracy"] == pytest.approx(1.0)
    # Best single accuracy 2/3 is reached by the cheapest point (2, 5/6).
    assert summary["cost_to_best_single"] == pytest.approx(2.0)
    assert summary["cost_saving"] == pytest.approx(1 - 2.0 / (10 / 3))
    assert summary["apgr"] == pytest.approx(1.0)  # (1 - .5) / (1 - .5)


def test_format_table():
  rows = [{"router": "knn", "accuracy": 0.5}, {"router": "a|b", "accuracy": 1, "n": 3}]
  assert evaluate.format_table(rows) == (
      "| router | accuracy | n |\n"
      "|---|---:|---:|\n"
      "| knn | 0.500 |  |\n"
      "| a\\|b | 1 | 3 |")
  assert evaluate.format_table(rows, columns=["n"], float_format="{:.1f}") == (
      "| n |\n|---:|\n|  |\n| 3 |")
  assert evaluate.format_table([]) == ""
