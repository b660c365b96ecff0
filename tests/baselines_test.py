"""Tests for recal_jax.baselines: hand tables, the synthetic table, real logs."""

import dataclasses
import importlib
import os

import numpy as np
import pytest

from recal_jax import baselines
from recal_jax import evaluate
from recal_jax.data.table import RoutingTable



def hand_table(features=None) -> RoutingTable:
  """4 queries x 3 arms; datasets a = {q0, q1}, b = {q2, q3}.

            score             cost
    q0   [1, 0, 1]    [1, 2, 10]
    q1   [0, 1, 1]    [1, 2, 10]
    q2   [0, 0, 1]    [1, 2, 10]
    q3   [0, 1, 1]    [1, 2, 10]

  Arm means: 0.25, 0.5, 1.0. Dataset a: 0.5, 0.5, 1; dataset b: 0, 0.5, 1.
  """
  if features is None:
    features = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
  score = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]], np.float32)
  return RoutingTable(
      name="hand",
      query_ids=np.array(["q0", "q1", "q2", "q3"]),
      texts=np.array(["w", "x", "y", "z"], dtype=object),
      features=np.asarray(features, np.float32),
      dataset_ids=np.array([0, 0, 1, 1], np.int32),
      dataset_names=("a", "b"),
      arm_models=("tiny", "mid", "big"),
      arm_strategies=("direct",) * 3,
      input_price=np.ones(3, np.float32),
      output_price=np.ones(3, np.float32),
      score=score,
      format_ok=np.ones_like(score),
      cost=np.tile(np.array([1.0, 2.0, 10.0], np.float32), (4, 1)),
      tokens=np.zeros_like(score),
      outcome_mask=np.ones(score.shape, bool),
      split=np.zeros(4, np.int8),
  ).validate()


# ---------------------------------------------------------------- hand table
class TestHandTable:

  def test_best_single_and_cost_tradeoff(self):
    router = baselines.BestSingleArm().fit(hand_table())
    np.testing.assert_allclose(router.predict_scores(hand_table())[0], [0.25, 0.5, 1.0])
    assert router.arm() == 2
    # lambda = 0.1: 0.25 - 0.1, 0.5 - 0.2, 1 - 1.0 -> arm 1 (0.3).
    assert router.arm(0.1) == 1
    np.testing.assert_array_equal(router.choose(hand_table(), 0.1), [1, 1, 1, 1])
    # lambda = 1: every utility is negative; arm 0 (0.25 - 1) is the largest.
    assert router.arm(1.0) == 0

  def test_category_best(self):
    router = baselines.CategoryBestRouter().fit(hand_table())
    # lambda = 0.1: a: 0.5 - 0.1 = 0.4, 0.5 - 0.2, 1 - 1 -> arm 0;
    #               b: 0 - 0.1, 0.5 - 0.2 = 0.3, 0 -> arm 1.
    np.testing.assert_array_equal(router.choose(hand_table(), 0.1), [0, 0, 1, 1])
    np.testing.assert_array_equal(router.choose(hand_table()), [2, 2, 2, 2])

  def test_category_best_unseen_dataset_uses_arm_means(self):
    router = baselines.CategoryBestRouter().fit(hand_table().take(np.array([0, 1])))
    # Only dataset a was seen; b falls back to the training arm means (a's).
    np.testing.assert_allclose(router.predict_scores(hand_table())[3], [0.5, 0.5, 1.0])

  def test_oracle_router_matches_oracle_choices(self):
    table = hand_table()
    router = baselines.OracleRouter().fit(table)
    for weight in (0.0, 0.1, 1.0):
      np.testing.assert_array_equal(router.choose(table, weight),
                                    evaluate.oracle_choices(table, weight))
    # lambda = 0: ties on q0 (arms 0, 2) and q1/q3 (arms 1, 2) go to the cheaper arm.
    np.testing.assert_array_equal(router.choose(table), [0, 1, 2, 1])

  def test_knn_neighbours_and_scores(self):
    table = hand_table()
    router = baselines.KNNRouter(k=2).fit(table)
    # Query (1, 0.9): cosine nearest q0 (1, 0), then q1 (0, 1).
    query = dataclasses.replace(table.take(np.array([0])),
                                features=np.array([[1.0, 0.9]], np.float32))
    np.testing.assert_array_equal(router.neighbours(query), [[0, 1]])
    # Mean of q0 and q1 scores: [0.5, 0.5, 1].
    np.testing.assert_allclose(router.predict_scores(query), [[0.5, 0.5, 1.0]])

  def test_top_k_matches_stable_argsort(self):
    rng = np.random.default_rng(0)
    for trial in range(100):
      rows, cols = rng.integers(1, 12, size=2)
      k = int(rng.integers(1, cols + 2))
      # Odd trials: small integers, so ties across the k-th place are common.
      values = (rng.integers(0, 3, (rows, cols)).astype(float) if trial % 2
                else rng.random((rows, cols)))
      np.testing.assert_array_equal(
          baselines._top_k_stable(values, k),  # pylint: disable=protected-access
          np.argsort(-values, axis=1, kind="stable")[:, :k])

  def test_knn_euclidean(self):
    router = baselines.KNNRouter(k=1, metric="euclidean").fit(hand_table())
    query = dataclasses.replace(hand_table().take(np.array([0])),
                                features=np.array([[0.1, -3.0]], np.float32))
    np.testing.assert_array_equal(router.neighbours(query), [[3]])

  def test_erp_without_features_is_best_single(self):
    table = hand_table(features=np.zeros((4, 0)))
    router = baselines.ERPRouter(ridge=1.0).fit(table)
    np.testing.assert_allclose(router.predict_scores(table),
                               np.tile([0.25, 0.5, 1.0], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(router.expected_cost(table), np.tile([1, 2, 10], (4, 1)),
                               atol=1e-5)

  def test_erp_dataset_only_is_category_best(self):
    # The one-hot alone (no query features, or ridge = inf) gives exactly the
    # per-dataset means: same scores, costs and choices at every cost weight.
    category = baselines.CategoryBestRouter().fit(hand_table())
    for table, ridge in ((hand_table(features=np.zeros((4, 0))), 1e-6),
                         (hand_table(), np.inf)):
      erp = baselines.ERPRouter(ridge=ridge, use_dataset_id=True).fit(table)
      np.testing.assert_array_equal(erp.predict_scores(table), category.predict_scores(table))
      np.testing.assert_array_equal(erp.expected_cost(table), category.expected_cost(table))
      for weight in (0.0, 0.05, 0.1, 1.0):
        np.testing.assert_array_equal(erp.choose(table, weight), category.choose(table, weight))

  def test_erp_matches_least_squares_with_unpenalised_dataset_intercepts(self):
    # Reference: min |y - [onehot, z] beta|^2 + ridge |w|^2 by augmented least
    # squares, the one-hot columns carrying no penalty.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 2)).astype(np.float32)
    table = hand_table(features=features)
    ridge = 0.3
    erp = baselines.ERPRouter(ridge=ridge, use_dataset_id=True).fit(table)
    z = (features - features.mean(0)) / features.std(0)
    one_hot = np.eye(2)[table.dataset_ids]
    design = np.concatenate([one_hot, z], 1)
    penalty = np.concatenate([np.zeros((2, 2)), np.sqrt(ridge) * np.eye(2)], 1)
    expected = []
    for arm in range(3):
      beta = np.linalg.lstsq(np.concatenate([design, penalty]),
                             np.concatenate([table.score[:, arm], np.zeros(2)]), rcond=None)[0]
      expected.append(design @ beta)
    np.testing.assert_allclose(erp.predict_scores(table), np.clip(np.stack(expected, 1), 0, 1),
                               atol=1e-6)
    # linear_model (one-hot columns carry the intercepts) reproduces the predictions.
    model = erp.linear_model()
    x = np.concatenate([features, one_hot], 1)
    x = np.concatenate([(x - model["feature_mean"]) / model["feature_std"], np.ones((4, 1))], 1)
    np.testing.assert_allclose(np.clip(x @ model["score_weights"], 0, 1),
                               erp.predict_scores(table), atol=1e-5)

  def test_random_is_deterministic(self):
    table = hand_table()
    a = baselines.RandomRouter(seed=3).fit(table).choose(table)
    b = baselines.RandomRouter(seed=3).fit(table).choose(table, cost_weight=5.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4,) and a.min() >= 0 and a.max() < 3

  def test_select_on_validation(self):
    table = hand_table()
    grid = {"k": [1, 4]}
    selection = baselines.select_on_validation(
        lambda k: baselines.KNNRouter(k=k), grid, table, table, metric="accuracy")
    # k = 1 on its own training table is the oracle (accuracy 1); k = 4 uses the
    # arm means [0.25, 0.5, 1] and picks arm 2 everywhere (accuracy 1): a tie,
    # so the first in grid order wins.
    assert selection.params == {"k": 1} and selection.value == pytest.approx(1.0)
    assert [v for _, v in selection.results] == pytest.approx([1.0, 1.0])
    assert selection.router.k == 1

    def metric(val, choices):
      m = evaluate.route_metrics(val, choices)
      return m["accuracy"] - 0.05 * m["cost"]
    # k = 1: choices [0, 1, 2, 1], cost (1 + 2 + 10 + 2) / 4 = 3.75 -> 1 - 0.1875;
    # k = 4: cost 10 -> 1 - 0.5.
    selection = baselines.select_on_validation(
        baselines.KNNRouter, [{"k": 4}, {"k": 1}], table, table, metric=metric)
    assert selection.params == {"k": 1} and selection.value == pytest.approx(0.8125)
    assert [v for _, v in selection.results] == pytest.approx([0.5, 0.8125])
    # A figure of the whole router: the number of distinct arms it uses at
    # lambda = 0 (k = 1: three; k = 4: one), k = 4 listed first.
    selection = baselines.select_on_validation(
        baselines.KNNRouter, [{"k": 4}, {"k": 1}], table, table,
        router_metric=lambda val, router: len(set(router.choose(val).tolist())))
    assert selection.params == {"k": 1} and selection.value == 3.0
    with pytest.raises(ValueError, match="empty"):
      baselines.select_on_validation(baselines.KNNRouter, [], table, table)


class TestErrors:

  def test_unfitted(self):
    with pytest.raises(ValueError, match="not fitted"):
      baselines.KNNRouter().choose(hand_table())

  def test_arm_mismatch(self):
    table = hand_table()
    other = dataclasses.replace(table, arm_models=("tiny", "mid", "huge"))
    router = baselines.CategoryBestRouter().fit(table)
    with pytest.raises(ValueError, match="has arms .* fit on arms"):
      router.choose(other)

  def test_feature_mismatch(self):
    router = baselines.ERPRouter().fit(hand_table())
    with pytest.raises(ValueError, match="feature_dim 3, the router was fit on feature_dim 2"):
      router.choose(hand_table(features=np.ones((4, 3))))

  def test_knn_without_features(self):
    with pytest.raises(ValueError, match="no features"):
      baselines.KNNRouter().fit(hand_table(features=np.zeros((4, 0))))

  @pytest.mark.parametrize("make", [
      lambda: baselines.KNNRouter(k=0),
      lambda: baselines.KNNRouter(metric="dot"),
      lambda: baselines.MLPScoreRegressor(loss="hinge"),
      lambda: baselines.ERPRouter(reward_model="forest"),
      lambda: baselines.ERPRouter(ridge=-1.0),
  ])
  def test_bad_hyper_parameters(self, make):
    with pytest.raises(ValueError):
      make()


# ------------------------------------------------------------ synthetic table
@pytest.fixture(scope="module")
def synthetic():
  synthetic_lib = pytest.importorskip(
      "recal_jax.data.synthetic", reason="recal_jax.data.synthetic not available")
  table = synthetic_lib.make_synthetic()
  return table.subset("train"), table.subset("test")


@pytest.fixture(scope="module")
def fitted(synthetic):
  train, _ = synthetic
  routers = {
      "random": baselines.RandomRouter(seed=0),
      "best_single": baselines.BestSingleArm(),
      "category_best": baselines.CategoryBestRouter(),
      "knn": baselines.KNNRouter(k=20),
      "knn_dataset": baselines.KNNRouter(k=20, use_dataset_id=True),
      "mlp": baselines.MLPScoreRegressor(),
      "erp": baselines.ERPRouter(),
      "erp_dataset": baselines.ERPRouter(use_dataset_id=True),
  }
  return {name: router.fit(train) for name, router in routers.items()}


class TestSynthetic:

  def test_oracle_bounds_every_router(self, synthetic, fitted):
    _, test = synthetic
    for weight in (0.0, 100.0):
      oracle = evaluate.route_metrics(test, baselines.OracleRouter().fit(test).choose(test))
      for name, router in fitted.items():
        m = evaluate.route_metrics(test, router.choose(test, weight))
        assert oracle["accuracy"] >= m["accuracy"], name

  def test_best_single_is_max_column_mean(self, synthetic, fitted):
    train, _ = synthetic
    router = fitted["best_single"]
    choices = router.choose(train)
    assert np.all(choices == train.best_single_arm())
    assert evaluate.route_metrics(train, choices)["accuracy"] == pytest.approx(
        train.score.mean(0).max())

  def test_category_best_beats_best_single_on_train(self, synthetic, fitted):
    train, _ = synthetic
    category = evaluate.route_metrics(train, fitted["category_best"].choose(train))
    single = evaluate.route_metrics(train, fitted["best_single"].choose(train))
    assert category["accuracy"] >= single["accuracy"] - 1e-9

  def test_knn1_on_train_is_oracle(self, synthetic):
    train, test = synthetic
    router = baselines.KNNRouter(k=1).fit(train)
    # Each training query's nearest neighbour is itself ...
    np.testing.assert_array_equal(router.neighbours(train)[:, 0], np.arange(train.num_queries))
    assert evaluate.route_metrics(train, router.choose(train))["accuracy"] == pytest.approx(
        train.oracle_score())
    # ... and a test query gets the best arm of its nearest training query
    # (ties to the lower expected cost: the per-arm training mean).
    x = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
    y = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    nearest = np.argmax(y @ x.T, axis=1)
    arm_cost = train.cost.mean(0)
    expected = evaluate._lexicographic_argmax(  # pylint: disable=protected-access
        train.score[nearest], np.tile(-arm_cost, (test.num_queries, 1)))
    np.testing.assert_array_equal(router.choose(test), expected)

  def test_learned_routers_beat_random(self, synthetic, fitted):
    _, test = synthetic
    random = evaluate.route_metrics(test, fitted["random"].choose(test))["accuracy"]
    for name in ("mlp", "erp", "erp_dataset", "knn"):
      accuracy = evaluate.route_metrics(test, fitted[name].choose(test))["accuracy"]
      assert accuracy > random + 0.05, (name, accuracy, random)

  def test_cost_weight_lowers_cost(self, synthetic, fitted):
    _, test = synthetic
    for name in ("erp", "knn_dataset", "category_best"):
      free = evaluate.route_metrics(test, fitted[name].choose(test, 0.0))
      costly = evaluate.route_metrics(test, fitted[name].choose(test, 1000.0))
      assert costly["cost"] < free["cost"], name

  def test_mlp_is_deterministic_and_learns(self, synthetic, fitted):
    train, test = synthetic
    router = fitted["mlp"]
    assert router.train_losses[-1] < router.train_losses[0]
    scores = router.predict_scores(test)
    assert scores.shape == (test.num_queries, test.num_arms)
    assert np.all((scores >= 0) & (scores <= 1))
    # Same configuration again (the compiled loop is cached): same numbers.
    again = baselines.MLPScoreRegressor().fit(train).predict_scores(test)
    np.testing.assert_allclose(scores, again, atol=1e-6)
    other_seed = baselines.MLPScoreRegressor(seed=1).fit(train).predict_scores(test)
    assert np.abs(scores - other_seed).max() > 1e-4


# ------------------------------------------------------------------ real logs
def _load_real(name):
  """The real log, from where the loader looks ($RECAL_ROUTING_DATA, else
  <repo>/../shared/routing_data); skipped with that path when it is absent."""
  try:
    real = importlib.import_module("recal_jax.data.real")
  except ImportError as err:
    pytest.skip(f"recal_jax.data.real is not available ({err})")
  routing_data = real.default_manual_dir()
  if not os.path.isdir(routing_data):
    pytest.skip(f"real routing logs not found at {routing_data}")
  return real.load_real_table(name)


@pytest.mark.parametrize("name, best_single, oracle", [
    ("llmrouter_seven", 0.670, 0.806),
    ("routeprofile", 0.612, 0.757),
])
def test_real_reference_numbers(name, best_single, oracle):
  table = _load_real(name)
  ref = evaluate.reference_points(table)
  # The README gives three decimals.
  assert ref["best_single"]["accuracy"] == pytest.approx(best_single, abs=6e-4)
  assert ref["oracle"]["accuracy"] == pytest.approx(oracle, abs=6e-4)
  single = baselines.BestSingleArm().fit(table).choose(table)
  assert evaluate.route_metrics(table, single)["accuracy"] == pytest.approx(
      best_single, abs=6e-4)
  upper = baselines.OracleRouter().fit(table).choose(table)
  assert evaluate.route_metrics(table, upper)["accuracy"] == pytest.approx(oracle, abs=6e-4)


@pytest.mark.parametrize("name", ["llmrouter_seven", "routeprofile"])
def test_real_erp_without_query_residual_is_category_best(name):
  """ERP +id with ridge = inf routes exactly as category best on a real log's test split."""
  table = _load_real(name)
  train, test = table.subset("train"), table.subset("test")
  erp = baselines.ERPRouter(ridge=np.inf, use_dataset_id=True).fit(train)
  category = baselines.CategoryBestRouter().fit(train)
  for weight in (0.0, 1e2, 1e3, 1e4):
    np.testing.assert_array_equal(erp.choose(test, weight), category.choose(test, weight))
