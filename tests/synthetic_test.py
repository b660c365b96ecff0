"""Tests for recal_jax.data.synthetic: shapes, determinism, calibration."""

import numpy as np
import pytest

from recal_jax.data import synthetic
from recal_jax.data import table as table_lib

NUM_QUERIES = 4000


@pytest.fixture(scope="module")
def table():
  return synthetic.make_synthetic(NUM_QUERIES, seed=0)


def _arm(table, model, strategy):
  return table.arm_names.index(f"{model}|{strategy}")


def test_shapes_and_validate(table):
  num_arms = len(synthetic.MODELS) * len(synthetic.STRATEGIES)
  assert table.num_queries == NUM_QUERIES
  assert table.num_arms == num_arms == 10
  assert table.dataset_names == synthetic.DATASETS and table.num_datasets == 7
  assert table.model_names == synthetic.MODELS and table.strategy_names == ("direct", "cot")
  assert table.features.shape == (NUM_QUERIES, 32) and table.features.dtype == np.float32
  for field in ("score", "format_ok", "cost", "tokens"):
    assert getattr(table, field).shape == (NUM_QUERIES, num_arms)
    assert getattr(table, field).dtype == np.float32
  assert table.outcome_mask.all()
  assert table.featurizer == "synthetic-latent"
  assert np.bincount(table.dataset_ids, minlength=7).min() > 400
  table.validate()


@pytest.mark.parametrize("num_queries,feature_dim", [(1, 1), (7, 3), (10, 8), (20000, 32)])
def test_sizes(num_queries, feature_dim):
  small = synthetic.make_synthetic(num_queries, seed=3, feature_dim=feature_dim)
  assert small.num_queries == num_queries and small.feature_dim == feature_dim
  if num_queries >= 7:
    assert set(small.dataset_ids.tolist()) == set(range(7))


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_queries"):
    synthetic.make_synthetic(0)
  with pytest.raises(ValueError, match="feature_dim"):
    synthetic.make_synthetic(10, feature_dim=0)
  with pytest.raises(ValueError, match="fractions"):
    synthetic.make_synthetic(10, split_fractions=(0.5, 0.1, 0.1))


def test_deterministic_in_seed(table):
  again = synthetic.make_synthetic(NUM_QUERIES, seed=0)
  assert again.fingerprint() == table.fingerprint()
  for field in ("features", "score", "format_ok", "cost", "tokens", "split", "dataset_ids"):
    np.testing.assert_array_equal(getattr(again, field), getattr(table, field))
  assert (again.texts == table.texts).all()
  other = synthetic.make_synthetic(NUM_QUERIES, seed=1)
  assert other.fingerprint() != table.fingerprint()
  assert not np.array_equal(other.score, table.score)


def test_prices_span_and_cost_formula(table):
  assert table.input_price.min() == pytest.approx(0.1)
  assert table.output_price.max() == pytest.approx(15.0)
  # cost = prompt * input / 1e6 + completion * output / 1e6, and a query's
  # prompt is the same for every model under one strategy.
  prompt = (table.cost - table.tokens * table.output_price / 1e6) / table.input_price * 1e6
  for strategy in ("direct", "cot"):
    arms = [i for i, s in enumerate(table.arm_strategies) if s == strategy]
    np.testing.assert_allclose(prompt[:, arms], prompt[:, arms[:1]].repeat(len(arms), 1),
                               rtol=2e-3, atol=0.5)
  np.testing.assert_allclose(prompt, np.round(prompt), atol=0.5)
  assert (table.tokens >= 1).all()


def test_oracle_best_single_and_cheapest(table):
  accuracy = table.mean_arm_score()
  best = table.best_single_arm()
  oracle = table.oracle_score()
  assert 0.65 <= accuracy[best] <= 0.8
  assert oracle >= accuracy[best] + 0.12
  assert 0.85 <= oracle <= 0.97
  cheapest = int(np.argmin(table.cost.mean(0)))
  assert table.arm_names[cheapest] == "nano-1b|direct"
  assert accuracy[cheapest] <= accuracy[best] - 0.3
  # The best arm is also the most expensive on average: routing can save.
  assert best == int(np.argmax(table.cost.mean(0)))


def test_a_cheaper_routing_matches_the_best_single_arm(table):
  """Per dataset, the cheapest arm as good as the best single arm there."""
  best = table.best_single_arm()
  routed_score, routed_cost = 0.0, 0.0
  for d in range(table.num_datasets):
    rows = table.dataset_ids == d
    accuracy, cost = table.score[rows].mean(0), table.cost[rows].mean(0)
    good_enough = np.flatnonzero(accuracy >= accuracy[best] - 0.01)
    arm = good_enough[np.argmin(cost[good_enough])]
    routed_score += rows.mean() * accuracy[arm]
    routed_cost += rows.mean() * cost[arm]
  assert routed_score >= table.mean_arm_score()[best] - 0.01
  assert routed_cost <= 0.7 * table.cost[:, best].mean()


def test_cot_versus_direct(table):
  for model in synthetic.MODELS:
    direct, cot = _arm(table, model, "direct"), _arm(table, model, "cot")
    assert table.tokens[:, cot].mean() > 4 * table.tokens[:, direct].mean()
    assert table.cost[:, cot].mean() > table.cost[:, direct].mean()
    # cot fails the answer format more often.
    assert table.format_ok[:, cot].mean() < table.format_ok[:, direct].mean()
    for reasoning in ("arith", "logic"):
      rows = table.dataset_ids == synthetic.DATASETS.index(reasoning)
      if model != "nano-1b":  # too small to profit after its format failures
        assert table.score[rows, cot].mean() > table.score[rows, direct].mean() + 0.08
  # Small models fail the format more than large ones.
  fail = 1 - table.format_ok.mean(0)
  assert fail[_arm(table, "nano-1b", "cot")] > 3 * fail[_arm(table, "frontier-xl", "cot")]
  assert fail[_arm(table, "nano-1b", "direct")] > 3 * fail[_arm(table, "frontier-xl", "direct")]


def test_format_failure_scores_zero(table):
  assert (table.score[table.format_ok == 0] == 0).all()
  assert set(np.unique(table.format_ok).tolist()) == {0.0, 1.0}


def test_graded_and_binary_scores(table):
  code = table.dataset_ids == synthetic.DATASETS.index("code")
  assert len(np.unique(table.score[code])) > 2  # pass rates in tenths
  np.testing.assert_allclose(table.score[code] * 10, np.round(table.score[code] * 10), atol=1e-5)
  assert set(np.unique(table.score[~code]).tolist()) <= {0.0, 1.0}


def test_datasets_differ_in_difficulty_and_spread(table):
  mean_over_arms = table.score.mean(1)  # [Q]
  means, spreads, no_spread = {}, {}, {}
  for d, name in enumerate(table.dataset_names):
    rows = table.dataset_ids == d
    means[name] = mean_over_arms[rows].mean()
    spreads[name] = mean_over_arms[rows].std()
    no_spread[name] = (table.score[rows].std(1) == 0).mean()
  assert means["mcq_easy"] > 0.85 and means["mcq_hard"] < 0.35
  assert max(spreads.values()) > 1.8 * min(spreads.values())
  # mcq_easy has many all-equal groups (no learning signal); code has none.
  assert no_spread["mcq_easy"] > 0.3 and no_spread["code"] < 0.02
  # Only the expensive model does well on mcq_hard.
  hard = table.dataset_ids == synthetic.DATASETS.index("mcq_hard")
  per_arm = table.score[hard].mean(0)
  assert table.arm_models[int(np.argmax(per_arm))] == "frontier-xl"
  assert np.sort(per_arm)[-3] < 0.6 * per_arm.max()
  # open_qa is noisy: its oracle is far above its best arm.
  qa = table.dataset_ids == synthetic.DATASETS.index("open_qa")
  assert table.score[qa].max(1).mean() > table.score[qa].mean(0).max() + 0.3


def test_features_carry_dataset_and_routing_signal(table):
  train, test = table.subset("train"), table.subset("test")
  # Nearest-centroid on features recovers the dataset well, not perfectly.
  centroids = np.stack([train.features[train.dataset_ids == d].mean(0) for d in range(7)])
  distance = ((test.features[:, None, :] - centroids[None]) ** 2).sum(-1)
  dataset_accuracy = (distance.argmin(1) == test.dataset_ids).mean()
  assert 0.6 < dataset_accuracy < 0.999

  # A linear score model on features routes better than one on the dataset.
  def ridge_router_score(design_train, design_test):
    weights = np.linalg.solve(design_train.T @ design_train + np.eye(design_train.shape[1]),
                              design_train.T @ train.score)
    choice = np.argmax(design_test @ weights, axis=1)
    return test.score[np.arange(test.num_queries), choice].mean()

  one_hot = lambda t: np.eye(7)[t.dataset_ids]
  with_features = ridge_router_score(
      np.concatenate([train.features, one_hot(train)], 1),
      np.concatenate([test.features, one_hot(test)], 1))
  dataset_only = ridge_router_score(one_hot(train), one_hot(test))
  assert with_features > dataset_only + 0.02
  assert with_features > test.mean_arm_score().max() + 0.02


def test_texts_and_ids(table):
  assert len(set(table.texts.tolist())) == NUM_QUERIES
  assert len(set(table.query_ids.tolist())) == NUM_QUERIES
  for text, d in zip(table.texts[::97], table.dataset_ids[::97]):
    assert text.startswith(table.dataset_names[d] + " q")


def test_splits_disjoint_by_text_and_stratified(table):
  texts_by_split = [set(table.texts[table.split == s].tolist()) for s in range(3)]
  for a in range(3):
    for b in range(a + 1, 3):
      assert not texts_by_split[a] & texts_by_split[b]
  for d in range(table.num_datasets):
    rows = table.dataset_ids == d
    fractions = np.bincount(table.split[rows], minlength=3) / rows.sum()
    np.testing.assert_allclose(fractions, (0.7, 0.1, 0.2), atol=0.01)
  custom = synthetic.make_synthetic(1000, split_fractions=(0.5, 0.25, 0.25))
  np.testing.assert_allclose(np.bincount(custom.split) / 1000, (0.5, 0.25, 0.25), atol=0.01)
  assert custom.split.dtype == np.int8
  assert set(np.unique(table.split).tolist()) == {table_lib.TRAIN, table_lib.VALIDATION,
                                                  table_lib.TEST}


def test_texts_carry_the_routing_signal(table):
  """Hashed query texts say what the latent features say (README's router reads text).

  R^2 of a ridge map from features to the latent features on test: the
  dataset one-hot explains ~0.29, hashed texts ~0.59 (the old texts, one
  topic word family and a noisy adjective: 0.35).
  """
  from recal_jax.data import features as features_lib  # pylint: disable=import-outside-toplevel
  texts = features_lib.featurize(table, "hashing")
  train, test = table.split == table_lib.TRAIN, table.split == table_lib.TEST

  def explained(design):
    design = np.concatenate([design, np.ones((len(design), 1))], 1)
    weights = np.linalg.solve(design[train].T @ design[train] + np.eye(design.shape[1]),
                              design[train].T @ table.features[train])
    residual = table.features[test] - design[test] @ weights
    total = table.features[test] - table.features[train].mean(0)
    return 1 - (residual ** 2).sum() / (total ** 2).sum()

  from_dataset = explained(np.eye(7)[table.dataset_ids])
  from_text = explained(texts.features)
  assert from_text > from_dataset + 0.2, (from_text, from_dataset)
  # And a linear score model on the hashed texts routes above the best single arm.
  hashed_train, hashed_test = texts.subset("train"), texts.subset("test")
  design = np.concatenate([hashed_train.features, np.ones((hashed_train.num_queries, 1))], 1)
  weights = np.linalg.solve(design.T @ design + 10 * np.eye(design.shape[1]),
                            design.T @ hashed_train.score)
  design_test = np.concatenate([hashed_test.features, np.ones((hashed_test.num_queries, 1))], 1)
  choice = np.argmax(design_test @ weights, axis=1)
  routed = hashed_test.score[np.arange(hashed_test.num_queries), choice].mean()
  assert routed > hashed_test.mean_arm_score().max() + 0.01
