r"""Trains an LLM router with RL and calibrated rewards; prints how it compares.

  python -m experiments.train --config=experiments/configs/quick.py \
      --workdir=/tmp/recal_quick

  # any config field can be overridden:
  python -m experiments.train --config=experiments/configs/default.py \
      --workdir=/tmp/recal_grpo --config.method=grpo --config.num_train_steps=300

Writes checkpoints, `metrics.jsonl` and TensorBoard event files to --workdir
(`tensorboard --logdir <workdir>/tensorboard`); re-running with the same
--workdir resumes from the latest checkpoint. On SIGTERM (preemption) it saves
a checkpoint of the current step and exits with status 75
(`train.PREEMPTED_EXIT_CODE`); rerun the same command to resume. At the end
it prints validation and test accuracy and cost of the trained router (best
checkpoint on validation) next to the best single arm (chosen on train) and
the per-query oracle.

A mistake in the input (a config file or field that does not exist, an unknown
method, a bad number, malformed data) stops it with one line on stderr and
exit status 2; a crash prints one line and exits 1; `--verbosity=1` adds the
traceback (`experiments/cli.py`).
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from recal_jax import evaluate
from recal_jax import train
from recal_jax.training import console

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard files.")
flags.DEFINE_bool("verbose_checkpointing", False,
                  "Show Orbax's and JAX's INFO logs (hidden by default below --verbosity=1: Orbax "
                  "writes one line per checkpoint file).")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if FLAGS.verbose_checkpointing:
    console.show_third_party_logs()  # else the training loop hides them (below --verbosity=1)
  config = cli.load_config()
  cli.validate_config(config)
  logging.vlog(1, "Config:\n%s", config)  # the full record is workdir/config.json
  try:
    final = train.train_and_evaluate(config, FLAGS.workdir)
  except train.Preempted as e:
    # Checkpointed; the exit status tells a job wrapper to rerun (resumes).
    print(f"\n{e}", flush=True)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  table = evaluate.format_table(train.comparison_rows(final), float_format="{:.4g}")
  print(f"\nAfter {final['step']} steps ({config.method}, {config.policy.kind} router; "
        f"best validation checkpoint: step {final['best_step']}):\n{table}")
  del final  # app.run would print a returned value


if __name__ == "__main__":
  cli.run(main)
