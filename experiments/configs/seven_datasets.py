r"""ReCal on the real seven-dataset LLMRouter logs, hashing text features.

  python -m experiments.train --config=experiments/configs/seven_datasets.py \
      --workdir=/tmp/recal_seven

Data: `load_table('llmrouter_seven', featurizer='hashing')`: 3,723 queries
(natural_qa, trivia_qa, mmlu, gsm8k, mbpp, arc_challenge, commonsense_qa) x 9
models (one strategy, 'direct'), re-split 70/10/20 (2,606 / 372 / 745),
512-d signed hashing of word uni- and bigrams. The logs are read from
../shared/routing_data (or $RECAL_ROUTING_DATA, or --config.data.manual_dir).
Costs are ESTIMATED (no token counts are logged).

Tuned on the validation split only (learning rate, entropy bonus, cost weight,
network width, selection metric); the test split is reported, not tuned on.
What mattered: an input LayerNorm (policies.MLP) so that sparse hashed
features move the logits at all; an entropy bonus, because with a cost reward
the policy otherwise collapses onto one arm within ~50 steps; a small cost
weight (0.2), because cost is compared among correct rollouts after
per-dataset standardisation, so it is scale-free and 0.5 drives the router to
the cheapest model; selecting the checkpoint by validation reward. Past a few
hundred steps the router memorises per-query outcomes of the training queries
(train accuracy keeps rising, validation does not): the best checkpoint is
kept.

Expect (about 15 s on 2 CPU cores; seeds 0 / 1 / 2): validation accuracy
0.651 / 0.637 / 0.656 at 1.72e-4 / 1.11e-4 / 1.79e-4 USD per query, against the
best single model on validation (llama-3.1-nemotron-51b-instruct, chosen on
train) 0.634 at 2.21e-4, and the per-query oracle 0.801. On test (seed 0):
0.682 at 1.65e-4 vs the best single model's 0.698 at 2.24e-4: cheaper, a bit
less accurate. Routing each dataset to its best model on train would give
0.688 at 1.5e-4 on validation: there is headroom.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "llmrouter_seven"
  config.data.featurizer = "hashing"
  config.cost_scale = 1e-3  # per-call costs are 1e-5 .. 1.2e-3 USD
  config.method_overrides = '{"component_weights": {"format": 1.0, "correctness": 1.0, "cost": 0.2}}'
  config.policy.hidden_dims = (128,)
  config.batch_size = 128
  config.group_size = 8
  config.num_train_steps = 600
  config.learning_rate = 1e-3
  config.loss.entropy_coef = 0.1
  config.eval_every_steps = 25
  config.log_every_steps = 25
  config.checkpoint_every_steps = 200
  config.best_metric = "validation/reward"
  return config
