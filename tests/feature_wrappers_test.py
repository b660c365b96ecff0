"""recal_jax.data.feature_wrappers: question-only and +dataset_id featurizers, rebuilt by name."""

import json

import numpy as np
import pytest

from recal_jax.data import feature_wrappers
from recal_jax.data import features as features_lib
from recal_jax.data import jsonl as jsonl_lib
from recal_jax.data import load_table_from_config
from recal_jax.data import make_synthetic

PREFIX = "You are a helpful assistant. " * 40  # a long shared few-shot template


def test_dataset_id_identity_round_trips_and_appends_one_hot():
  table = make_synthetic(60, seed=0)
  featurizer = features_lib.make_featurizer("hashing+dataset_id", dataset_names=table.dataset_names)
  assert featurizer.name == features_lib.make_featurizer("hashing").name + "+dataset_id"
  again = features_lib.make_featurizer(featurizer.name, dataset_names=table.dataset_names)
  x = again(["What is 17 * 23?", "a"], datasets=["arith", "code"])
  assert x.shape == (2, 512 + 7)
  np.testing.assert_array_equal(x[:, 512:].argmax(1), [0, 3])
  np.testing.assert_array_equal(x[:, :512], features_lib.make_featurizer("hashing")(
      ["What is 17 * 23?", "a"]))
  with pytest.raises(ValueError, match="give the dataset of every query"):
    again(["x"])
  with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['nope'\]"):
    again(["x"], datasets=["nope"])
  with pytest.raises(ValueError, match="needs the dataset names"):
    features_lib.make_featurizer(featurizer.name)
  # The old failure: the MiniLM identity parser read '256+dataset_id' as maxlen.
  minilm = feature_wrappers.build("minilm-l6-v2:maxlen=256+dataset_id", dataset_names=["a"]) \
      if _has_minilm() else None
  if minilm is not None:
    assert minilm.name == "minilm-l6-v2:maxlen=256+dataset_id"


def _has_minilm():
  try:
    from recal_jax.data import minilm  # pylint: disable=import-outside-toplevel
    minilm.MiniLMFeaturizer(cache_dir=None)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def test_question_pattern_keeps_the_question_and_round_trips():
  featurizer = features_lib.make_featurizer('question("Question: (.*)$"):hashing')
  texts = [PREFIX + "Question: What is 17 * 23?", "no marker here"]
  x = featurizer(texts)
  plain = features_lib.make_featurizer("hashing")
  np.testing.assert_array_equal(x, plain(["What is 17 * 23?", "no marker here"]))
  assert features_lib.make_featurizer(featurizer.name).name == featurizer.name
  with pytest.raises(ValueError, match="needs a group"):
    features_lib.make_featurizer('question("Question:"):hashing')
  with pytest.raises(ValueError, match="not a regular expression"):
    features_lib.make_featurizer('question("(unclosed"):hashing')
  with pytest.raises(ValueError, match="expected"):
    features_lib.make_featurizer('question(oops):hashing')


def _log_with_shared_prefix(tmp_path, n=12):
  table = make_synthetic(n, seed=0)
  texts = np.array([PREFIX + f"Question: item {i} about {t.split(':')[1]}"
                    for i, t in enumerate(table.texts)], dtype=object)
  table = table.with_features(table.features, table.featurizer)
  object.__setattr__(table, "texts", texts)
  path = tmp_path / "log.jsonl"
  jsonl_lib.dump_jsonl(table, str(path))
  return str(path)


def test_identical_feature_rows_warn_with_the_count_and_the_pattern_fixes_it(tmp_path):
  path = _log_with_shared_prefix(tmp_path)
  # A featurizer that sees only the first 20 tokens, like MiniLM past 256 tokens.
  truncating = features_lib.make_featurizer('question("^((?:\\\\S+\\\\s+){20})"):hashing')
  table = jsonl_lib.load_jsonl(path)
  with pytest.warns(UserWarning, match=r"12 of 12 queries share their features"):
    features_lib.featurize(table, truncating)
  config = {"name": "jsonl", "path": path, "featurizer": "hashing",
            "question_pattern": "Question: (.*)$", "split_fractions": (0.5, 0.25, 0.25)}
  import warnings  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    loaded = load_table_from_config(config)
  assert loaded.featurizer.startswith('question("Question: (.*)$"):hashing-v1')
  assert feature_wrappers.duplicate_feature_rows(loaded.features, loaded.texts) == 0
  assert json.dumps(loaded.featurizer)  # a plain string identity


def test_jsonl_config_reads_path_and_split_fractions(tmp_path):
  from experiments import cli  # pylint: disable=import-outside-toplevel
  from experiments.configs import jsonl as jsonl_config  # pylint: disable=import-outside-toplevel
  config = jsonl_config.get_config()
  with pytest.raises(cli.ConfigError, match="--config.data.path is empty"):
    cli.validate_config(config)
  table = make_synthetic(400, seed=0)
  path = str(tmp_path / "log.jsonl")
  jsonl_lib.dump_jsonl(table.with_features(np.zeros((400, 0), np.float32), "none"), path)
  lines = [json.loads(l) for l in open(path)]
  with open(path, "w") as f:
    for obj in lines:
      obj.pop("split", None)  # no given split: the config's fractions decide
      f.write(json.dumps(obj) + "\n")
  config.data.path = path
  config.data.split_fractions = (0.5, 0.3, 0.2)
  cli.validate_config(config)
  loaded = load_table_from_config(config.data)
  np.testing.assert_allclose(np.bincount(loaded.split) / 400, (0.5, 0.3, 0.2), atol=0.02)
  assert loaded.featurizer.startswith("hashing-v1")


@pytest.mark.slow
def test_plus_id_router_from_compare_loads_and_routes(tmp_path):
  """Issue 14 item 5: compare's '+id' routers load with Router.load and route texts."""
  from experiments import compare  # pylint: disable=import-outside-toplevel
  from experiments.configs import quick  # pylint: disable=import-outside-toplevel
  from recal_jax import router as router_lib  # pylint: disable=import-outside-toplevel
  from recal_jax import train  # pylint: disable=import-outside-toplevel
  table = compare.with_dataset_id(features_lib.featurize(make_synthetic(300, seed=0), "hashing"))
  assert table.featurizer.endswith("+dataset_id")
  config = quick.get_config()
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 2, 2, 2
  config.batch_size, config.num_devices = 16, 1
  train.train_and_evaluate(config, str(tmp_path), table=table)
  router = router_lib.Router.load(str(tmp_path))
  result = router.route(["What is 17 * 23?", "write a parser"], datasets=["arith", "code"])
  assert len(result.model) == 2
  # Same features as the table's rows: routing a table text gives the training-time features.
  np.testing.assert_array_equal(router.featurize([table.texts[0]],
                                                 [table.dataset_names[table.dataset_ids[0]]]),
                                table.features[:1])
  with pytest.raises(ValueError, match="give the dataset of every query"):
    router.route(["What is 17 * 23?"])
