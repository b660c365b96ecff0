"""ReCal inside tunix's GRPOLearner (`recal_jax.integrations.tunix`).

Needs the optional extra (`pip install -e '.[tunix]'`); skipped without it.
The end-to-end test trains tunix's own toy transformer (`tunix.tests.
test_common.ToyTransformer`, 1 layer, a 22-word mock vocabulary: no
download) for two GRPO steps with three reward functions (format,
correctness, cost) and a dataset id per example.
"""

import numpy as np
import pytest

pytest.importorskip("tunix", reason="google-tunix is an optional extra: pip install -e '.[tunix]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tunix.rl import function_registry  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner as grpo_lib  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402
from tunix.tests import test_common as tc  # noqa: E402

from recal_jax import advantage  # noqa: E402
from recal_jax import calibration  # noqa: E402
from recal_jax.integrations import tunix as recal_tunix  # noqa: E402

G = 4  # num_generations
PROMPTS = ["hello world", "My name", "input string", "hello there"]
ANSWERS = ["hello", "name", "string", "there"]
DATASETS = [0, 1, 0, 1]
CONFIG = advantage.method_config("recal", dataset_norm="running", running_decay=0.5)


# Three reward components of a toy task, in the config's order.
def format_reward(prompts, completions, **unused):
  return [float("!" not in c.split()) for c in completions]


def correctness_reward(prompts, completions, answer, **unused):
  return [float(a in c.split()) for a, c in zip(answer, completions)]


def cost_reward(prompts, completions, **unused):
  return [-len(c) / 40.0 for c in completions]


REWARD_FNS = [format_reward, correctness_reward, cost_reward]


def _cluster():
  vocab = tc.MockVocab()
  make = lambda: tc.ToyTransformer(
      config=tc.ModelConfig(vocab_size=vocab.GetPieceSize(), num_layers=1),
      rngs=nnx.Rngs(0))
  model = make()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
  roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
           rl_cluster_lib.Role.ROLLOUT)
  config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={role: mesh for role in roles},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optax.sgd(1e-2), eval_every_n_steps=100, max_steps=2),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=6, max_prompt_length=8, kv_cache_size=64,
          temperature=1.0))
  cluster = rl_cluster_lib.RLCluster(actor=model, reference=make(), tokenizer=vocab,
                                     cluster_config=config)
  return cluster, model


def test_grpo_learner_with_recal():
  cluster, model = _cluster()
  before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  recal = recal_tunix.TunixReCal(CONFIG, num_datasets=2, name="recal_test").register()

  calls = []  # what the estimator received and returned, with the state before
  real_estimator = function_registry.get_advantage_estimator("recal_test")

  def spy(rewards, num_generations):
    pending = recal._pending[id(rewards)]  # pylint: disable=protected-access
    state = recal.dataset_state
    returned = real_estimator(rewards=rewards, num_generations=num_generations)
    calls.append(dict(rewards=np.array(rewards), g=num_generations,
                      dataset_ids=pending.dataset_ids.copy(), state=state,
                      returned=returned, state_after=recal.dataset_state))
    return returned

  function_registry.register_advantage_estimator("recal_test")(spy)
  buffers = []
  cluster.with_external_metrics_logger(buffers.append)
  learner = grpo_lib.GRPOLearner(
      rl_cluster=cluster, reward_fns=REWARD_FNS, metric_fns=[recal.metric_fn],
      algo_config=grpo_lib.GRPOConfig(
          num_generations=G, num_iterations=1, beta=0.0,
          reward_manager="recal_test", advantage_estimator="recal_test"))
  batch = {"prompts": np.array(PROMPTS), "answer": np.array(ANSWERS),
           "dataset_id": np.array(DATASETS)}
  learner.train([dict(batch) for _ in range(2)])

  # (a) the estimator gets the [N, 3] components and tunix's contiguous groups.
  assert len(calls) == 2
  n = len(PROMPTS) * G
  for call in calls:
    assert call["g"] == G and call["rewards"].shape == (n, 3)
    np.testing.assert_array_equal(call["dataset_ids"], np.repeat(DATASETS, G))
    assert set(np.unique(call["rewards"][:, 0])) <= {0.0, 1.0}
    assert (call["rewards"][:, 2] < 0).all()
  assert np.std(np.concatenate([c["rewards"] for c in calls]), axis=0).min() > 0

  # (b) its output is exactly recal_advantages (weights folded in), and the
  # running state it carries is that call's new state.
  reference = jax.jit(lambda r, d, s: advantage.recal_advantages(
      r, jnp.repeat(jnp.arange(n // G), G), n // G, d, 2, config=CONFIG,
      dataset_state=s, group_size=G))
  for call in calls:
    out = reference(jnp.asarray(call["rewards"], jnp.float32),
                    jnp.asarray(call["dataset_ids"]), call["state"])
    expected = np.asarray(out.advantages * out.weights)
    assert call["returned"].dtype == np.float32
    np.testing.assert_array_equal(call["returned"], expected)
    jax.tree.map(np.testing.assert_array_equal, call["state_after"], out.dataset_state)
    call["diagnostics"] = jax.device_get(out.diagnostics)
  assert np.any(calls[-1]["returned"] != 0)
  assert int(calls[-1]["state_after"].count.sum()) == 4  # two updates x two datasets

  # (c) the parameters moved (the cluster trains a resharded copy of `model`).
  after = jax.tree.map(np.array, nnx.state(cluster.actor_trainer.model, nnx.Param))
  assert jax.tree.structure(after) == jax.tree.structure(before)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(before), jax.tree.leaves(after)))

  # (d) ReCal's diagnostics are in tunix's metrics, one value per call.
  logged = {}
  for buffer in buffers:
    for name, (values, _) in buffer.metrics.items():
      if name.startswith("recal_test/"):
        logged.setdefault(name, []).extend(values)
  assert logged["recal_test/zero_spread_groups"] == [
      pytest.approx(float(c["diagnostics"]["zero_spread_groups"]), abs=0) for c in calls]
  for k, component in enumerate(("format", "correctness", "cost")):
    assert logged[f"recal_test/gate_pass_rate/{component}"] == [
        float(c["diagnostics"]["gate_pass_rate"][k]) for c in calls]
  assert logged["recal_test/dataset_count/1"] == [float(len(PROMPTS) // 2 * G)] * 2


def _manager(recal):
  cls = function_registry.get_reward_manager(recal.name)
  return cls(reward_fns=REWARD_FNS,
             algo_config=grpo_lib.GRPOConfig(num_generations=G))


def _fields(n_prompts=2, **extra):
  fields = dict(answer=np.repeat(ANSWERS[:n_prompts], G),
                dataset_id=np.repeat(DATASETS[:n_prompts], G))
  fields.update(extra)
  return fields


def test_eval_chunks_do_not_update_the_running_state():
  recal = recal_tunix.TunixReCal(CONFIG, num_datasets=2, name="recal_eval").register()
  manager = _manager(recal)
  completions = ["hello world !", "hello", "name name", "x"] * 2
  prompts = np.repeat(PROMPTS[:2], G)
  info = manager(prompts=prompts, completions=completions, mode="eval", **_fields())
  assert info["rewards"].shape == (8, 3)
  recal.estimator(rewards=info["rewards"], num_generations=G)
  assert int(recal.dataset_state.count.sum()) == 0
  info = manager(prompts=prompts, completions=completions, mode="train", **_fields())
  recal.estimator(rewards=info["rewards"], num_generations=G)
  assert int(recal.dataset_state.count.sum()) == 2


def test_errors_name_the_problem():
  recal = recal_tunix.TunixReCal(CONFIG, num_datasets=2, name="recal_err").register()
  manager = _manager(recal)
  prompts, completions = np.repeat(PROMPTS[:2], G), ["a"] * 8
  with pytest.raises(ValueError, match="did not return"):
    recal.estimator(rewards=np.zeros((8, 3)), num_generations=G)
  with pytest.raises(ValueError, match="'dataset_id'.*per-example field|per-example field 'dataset_id'"):
    manager(prompts=prompts, completions=completions, answer=_fields()["answer"])
  with pytest.raises(ValueError, match=r"'dataset_id'\[0\] = 5 is outside \[0, 2\)"):
    manager(prompts=prompts, completions=completions, **_fields(dataset_id=np.full(8, 5)))
  with pytest.raises(ValueError, match="holds names"):
    manager(prompts=prompts, completions=completions, **_fields(dataset_id=np.array(["a"] * 8)))
  with pytest.raises(ValueError, match="3 reward functions for the config's 2 components"):
    two = advantage.ReCalConfig(components=("a", "b"))
    bad = recal_tunix.TunixReCal(two, num_datasets=2, name="recal_err2").register()
    _manager(bad)(prompts=prompts, completions=completions, **_fields())


def test_dataset_names_map_to_ids():
  recal = recal_tunix.TunixReCal(CONFIG, num_datasets=2, dataset_names=("math", "code"),
                                 name="recal_names").register()
  names = np.repeat(["code", "math"], G)
  info = _manager(recal)(prompts=np.repeat(PROMPTS[:2], G), completions=["a"] * 8,
                         **_fields(dataset_id=names))
  pending = recal._pending[id(info["rewards"])]  # pylint: disable=protected-access
  np.testing.assert_array_equal(pending.dataset_ids, np.repeat([1, 0], G))
  assert isinstance(recal.dataset_state, calibration.RunningDatasetStats)


@pytest.mark.parametrize("tunix_mode,mode", [("sequence-mean-token-mean", "seq-mean-token-mean"),
                                             ("token-mean", "token-mean")])
def test_folded_weights_give_the_weighted_clipped_loss(tunix_mode, mode):
  """tunix's GRPO loss on A * w == recal's policy_loss(A, sample_weights=w) with
  the unweighted normaliser, with clipping active; not the weighted average."""
  from tunix.rl import algo_core  # pylint: disable=import-outside-toplevel
  from tunix.rl import common  # pylint: disable=import-outside-toplevel
  from recal_jax import losses  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  n, prompt_len, completion_len = 8, 4, 5
  vocab = tc.MockVocab()
  model = tc.ToyTransformer(config=tc.ModelConfig(vocab_size=vocab.GetPieceSize(),
                                                  num_layers=1), rngs=nnx.Rngs(0))
  prompt_ids = jnp.asarray(rng.integers(3, 22, (n, prompt_len)), jnp.int32)
  lengths = rng.integers(1, completion_len + 1, n)
  mask = np.arange(completion_len)[None, :] < lengths[:, None]
  completion_ids = jnp.asarray(np.where(mask, rng.integers(3, 22, (n, completion_len)), 0),
                               jnp.int32)
  graphdef, state = nnx.split(model)
  log_probs = common.compute_per_token_logps(
      graphdef, state, prompt_tokens=prompt_ids, completion_tokens=completion_ids,
      pad_id=0, eos_id=2)
  old_log_probs = log_probs + jnp.asarray(rng.normal(0.0, 0.5, log_probs.shape), jnp.float32)
  adv = rng.normal(size=n).astype(np.float32)
  weights = np.concatenate([[0.0], rng.uniform(0.1, 3.0, n - 1)]).astype(np.float32)
  config = grpo_lib.GRPOConfig(num_generations=2, beta=0.0, epsilon=0.2,
                               loss_agg_mode=tunix_mode)
  config.temperature = 1.0  # GRPOLearner sets it from the rollout config
  example = grpo_lib.TrainExample(
      prompt_ids=prompt_ids, prompt_mask=prompt_ids != 0, completion_ids=completion_ids,
      completion_mask=jnp.asarray(mask), advantages=jnp.asarray(adv * weights),
      ref_per_token_logps=None, old_per_token_logps=old_log_probs)
  tunix_loss, aux = algo_core.grpo_loss_fn(model, example, config, pad_id=0, eos_id=2)
  assert float(aux["pg_clipfrac"]) > 0.1  # the clip is active
  token_mask = jnp.asarray(mask, jnp.float32)
  ours, _ = losses.policy_loss(log_probs, old_log_probs, jnp.asarray(adv), token_mask,
                               sample_weights=jnp.asarray(weights), mode=mode,
                               normalizer=losses.global_normalizer(token_mask, mode))
  np.testing.assert_allclose(float(tunix_loss), float(ours), rtol=2e-6)
  weighted_average, _ = losses.policy_loss(log_probs, old_log_probs, jnp.asarray(adv),
                                           token_mask, sample_weights=jnp.asarray(weights),
                                           mode=mode)
  assert abs(float(weighted_average) - float(tunix_loss)) > 1e-3
