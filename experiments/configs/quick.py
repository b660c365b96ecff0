r"""Quick config: the whole pipeline end to end in well under a minute on a CPU.

  python -m experiments.train --config=experiments/configs/quick.py \
      --workdir=/tmp/recal_quick

Trains the categorical router with ReCal for 150 steps of 64 queries x 8
routes on a 2,000-query synthetic table, evaluating every 50 steps and
checkpointing every 75: about 10-15 s on 2 CPU cores, most of it jit
compilation. Expect validation accuracy ~0.74 at ~2.8e-3 USD per query against
the best single arm (frontier-xl|cot) at 0.71 for 6.0e-3, the initial policy
at ~0.51, and the per-query oracle at 0.93.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.num_queries = 2000
  config.num_train_steps = 150
  config.batch_size = 64
  config.log_every_steps = 25
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 75
  return config
