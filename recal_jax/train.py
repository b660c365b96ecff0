"""Training a router with RL on logged (or live) routing outcomes.

The trainer lives in `recal_jax.training`; this module keeps the public names
in one place (`from recal_jax import train; train.train_and_evaluate(...)`):

  training/learner.py     train state, optimiser, the jitted step and chunk
  training/loop.py        `train_and_evaluate`: resume, chunks, logging, eval
  training/seeds.py       `train_seeds`: S seeds in one compiled program (compare)
  training/evaluation.py  greedy-route metrics, the final comparison table
  training/preemption.py  SIGTERM / multi-process preemption -> `Preempted`
  training/workdir.py     resume only with the same table and config
  training/console.py     quiet logs, the tqdm progress bar
  checkpointing.py        Orbax checkpoints (latest N + best N)
"""

from recal_jax.training.errors import ConfigError
from recal_jax.training.errors import NonFiniteError
from recal_jax.training.errors import WorkdirConflictError
from recal_jax.training.evaluation import comparison_rows
from recal_jax.training.evaluation import Evaluator
from recal_jax.training.evaluation import reference_metrics
from recal_jax.training.evaluation import routing_metrics
from recal_jax.training.evaluation import summarize
from recal_jax.training.evaluation import validation_reward
from recal_jax.training.learner import DATA_AXIS
from recal_jax.training.learner import global_batch
from recal_jax.training.learner import init_state
from recal_jax.training.learner import loss_mode
from recal_jax.training.learner import make_learn_fn
from recal_jax.training.learner import make_mesh
from recal_jax.training.learner import make_optimizer
from recal_jax.training.learner import make_step_functions
from recal_jax.training.learner import QuerySampler
from recal_jax.training.learner import StepFunctions
from recal_jax.training.learner import TrainState
from recal_jax.training.loop import check_finite
from recal_jax.training.loop import load_data
from recal_jax.training.loop import maybe_initialize_distributed
from recal_jax.training.loop import method_from_config
from recal_jax.training.loop import split_tables
from recal_jax.training.loop import train_and_evaluate
from recal_jax.training.preemption import Preempted
from recal_jax.training.preemption import PREEMPTED_EXIT_CODE
from recal_jax.training.preemption import PreemptionWatcher

_check_finite = check_finite  # the names tests and scripts used before the split
_PreemptionWatcher = PreemptionWatcher
