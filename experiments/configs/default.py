r"""Default config: ReCal on the embedded synthetic routing table.

Run (CPU, about 15 s on 2 cores; no files or network needed):

  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/recal_default

Override any field on the command line, e.g. a baseline or the token router
(which needs a stronger entropy bonus: learning the route format first makes
it collapse onto the first well-formed route it finds otherwise):

  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/recal_grpo --config.method=grpo
  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/recal_token --config.policy.kind=token \
      --config.loss.entropy_coef=0.2 --config.learning_rate=1e-3

Expect (synthetic table, seed 0: 4,000 queries, 7 datasets, 10 arms):
validation accuracy ~0.80 at ~2.3e-3 USD per query (test ~0.76 at 2.3e-3)
against the best single arm, frontier-xl|cot, at 0.758 for 6.0e-3 (test 0.730),
and the per-query oracle at 0.94. The token router with the overrides above:
~0.78 at 2.5e-3 (test ~0.77), malformed routes 0 after ~100 steps. GRPO on the
summed reward collapses onto a cheap arm (~0.5): the std-normalised
advantages of groups that are all right or all wrong magnify tiny cost
differences, which is what ReCal's gating and variance weights prevent.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from recal_jax import advantage

_PLACEHOLDER_TYPES = (bool, int, float, str, tuple)


def method_overrides(**values) -> ml_collections.ConfigDict:
  """One unset field per `advantage.ReCalConfig` field, then `values`.

  Typed placeholders (None = keep the method's own value), so
  `--config.method_overrides.<field>=<value>` is parsed to the field's type
  and a misspelt field is an error naming the flag. Weights by component name
  are nested: `component_weights.cost`, `sum_weights.correctness` (the routing
  components `format`, `correctness`, `cost`).
  """
  from recal_jax import recal_config  # pylint: disable=import-outside-toplevel
  overrides = ml_collections.ConfigDict()
  for field in dataclasses.fields(advantage.ReCalConfig):
    if field.name in ("component_weights", "sum_weights"):
      overrides[field.name] = ml_collections.ConfigDict(
          {c: config_dict.placeholder(float) for c in recal_config.ROUTING_COMPONENTS})
    elif field.name == "variance_component":
      overrides[field.name] = config_dict.placeholder(str)
    elif type(field.default) in _PLACEHOLDER_TYPES:
      overrides[field.name] = config_dict.placeholder(type(field.default))
  for name, value in values.items():
    overrides[name] = value
  return overrides


def get_config() -> ml_collections.ConfigDict:
  """Every field `recal_jax.train.train_and_evaluate` reads."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: load_table(name, featurizer=..., manual_dir=..., seed=...).
  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"  # 'synthetic' | 'jsonl:<path>' | 'routeprofile' | 'llmrouter_seven'
  # Query features: 'hashing' (signed hashing of word n-grams of the query
  # text, no model) lets the trained router route new text
  # (`Router.route(["What is 17 * 23?"])`). '' = the table's own features
  # (synthetic: the latent 'synthetic-latent', which no text can reproduce;
  # other tables: 'hashing'); 'minilm' = MiniLM sentence embeddings.
  config.data.featurizer = "hashing"
  config.data.manual_dir = ""  # real data: directory of the downloaded logs ('' = default)
  config.data.seed = 0  # draws the synthetic table; seeds splits without a given one
  config.data.num_queries = 4000  # synthetic only
  config.data.feature_dim = 32  # synthetic only, with featurizer '' (latent features)
  # (train, validation, test) fractions for queries without a given split
  # (synthetic, JSONL; the real logs are always re-split 70 / 10 / 20).
  config.data.split_fractions = (0.7, 0.1, 0.2)

  # Policy: 'categorical' (one decision over the arms) or 'token' (writes
  # '<strategy> <model> <eos>' over the full vocabulary; can be malformed).
  config.policy = ml_collections.ConfigDict()
  config.policy.kind = "categorical"
  config.policy.hidden_dims = (128,)
  config.policy.embedding_dim = 64  # categorical: query / arm embedding size
  config.policy.state_dim = 128  # token: GRU state size
  config.policy.token_embedding_dim = 32  # token: token embedding size

  # Method: a name of `recal_jax.advantage.METHODS` ('recal', 'grpo',
  # 'dr_grpo', 'rloo', 'gdpo', 'router_r1', 'recal_no_hierarchy',
  # 'recal_no_variance_weights', 'recal_no_dataset_norm'), and in
  # `method_overrides` one field per `ReCalConfig` field: unset (None) keeps
  # the method's value, e.g.
  # --config.method_overrides.component_weights.cost=0.25  (weights by component name)
  # --config.method_overrides.variance_h=std
  config.method = "recal"
  config.method_overrides = method_overrides()
  # Component weights (format, correctness, cost) set the accuracy / cost
  # trade-off. ReCal compares cost among correct rollouts after per-dataset
  # standardisation, so its cost advantage is scale-free: the library default
  # 0.5 buys a router ~10x cheaper than the best single arm but less accurate;
  # 0.2 one that is more accurate than it at ~40% of its cost.
  config.method_overrides.component_weights.cost = 0.2  # format, correctness: 1
  # Cost reward = -cost_usd / cost_scale. With the per-call costs of the
  # synthetic table (up to ~1e-2 USD) this keeps the cost column in [-1, 0]
  # (it matters for the scalar-reward baselines: grpo, rloo, router_r1).
  config.cost_scale = 0.01

  # Rollouts: B queries per step, G routes sampled per query (one group each).
  config.batch_size = 128
  config.group_size = 8
  # 'logged': outcomes looked up in the table inside the jitted step.
  # 'live': sampled routes go to a Python `LiveEnvironment` callback between
  # two jitted halves (LoggedEnvironment by default: same numbers, slower).
  config.environment = "logged"

  # Loss (`recal_jax.losses.policy_loss`).
  config.loss = ml_collections.ConfigDict()
  config.loss.mode = "auto"  # 'auto': 'token-mean', or Dr. GRPO's norm for 'dr_grpo'
  config.loss.eps_low = 0.2
  config.loss.eps_high = 0.2
  config.loss.dual_clip = 0.0  # 0 = off
  config.loss.kl_coef = 0.0  # KL(pi || initial policy)
  config.loss.kl_estimator = "k3"
  # An entropy bonus keeps groups diverse: without it the policy collapses
  # onto few arms within ~100 steps and groups lose their reward spread.
  # Sparse hashed text features need the larger bonus and the smaller
  # learning rate below: with 0.05 / 3e-3 the quick run sits on the most
  # expensive arm (frontier-xl|cot) from step 50 to its end.
  config.loss.entropy_coef = 0.1
  config.num_updates_per_batch = 1  # >1: PPO-style reuse of each rollout batch

  # Optimiser: clip_by_global_norm, then AdamW.
  config.learning_rate = 1e-3
  config.lr_schedule = "constant"  # 'constant' | 'cosine'
  config.warmup_steps = 10
  config.max_grad_norm = 1.0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.weight_decay = 0.0
  config.num_train_steps = 600

  # Logging, evaluation, checkpoints.
  config.log_every_steps = 20
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 200
  config.max_checkpoints_to_keep = 3
  config.best_checkpoints_to_keep = 1  # plus the best by best_metric (Orbax BestN)
  # Resuming a work dir with another method / table / hyper-parameter is
  # refused (the error names the fields); True resumes anyway and keeps the
  # old record as config.<step>.json.
  config.override_saved_config = False
  # Keep the checkpoint maximising this validation statistic ('validation/
  # reward' = the method's weighted reward of greedy routes, or
  # 'validation/accuracy', 'validation/macro_accuracy').
  config.best_metric = "validation/reward"

  # Devices: 0 = all visible devices on the 'data' mesh axis.
  config.num_devices = 0
  # Multi-host (TPU pod slice, GPU cluster): call jax.distributed.initialize().
  config.distributed = False
  return config
