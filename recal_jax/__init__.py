"""recal_jax: train LLM routers with RL and calibrated rewards (ReCal), in JAX.

The maths lives in small modules of pure functions:

  recal_jax.advantage    GRPO / Dr. GRPO / RLOO / GDPO / ReCal group advantages
                         (from estimators, hierarchy, recal_config)
  recal_jax.calibration  variance-aware weights, per-dataset normalisation
  recal_jax.losses       clipped policy-gradient surrogate, KL, entropy, aggregation
  recal_jax.rewards      routing reward components and the Router-R1 scalar reward
  recal_jax.segments     the segment statistics all of them share

Training, data and routing live in recal_jax.train, recal_jax.data and
recal_jax.router (imported on demand, so `import recal_jax` stays light).
"""

from recal_jax import advantage
from recal_jax import calibration
from recal_jax import losses
from recal_jax import rewards
from recal_jax import segments
from recal_jax.advantage import (
    Hierarchy,
    METHODS,
    ReCalConfig,
    ReCalOutput,
    check_inputs,
    componentwise_advantages,
    gdpo_advantages,
    group_stats,
    grpo_advantages,
    hierarchical_gate,
    method_config,
    recal_advantages,
    rloo_advantages,
    whiten,
)
from recal_jax.calibration import (
    RunningDatasetStats,
    dataset_balance_weights,
    dataset_normalize,
    init_dataset_stats,
    running_dataset_stats,
    update_dataset_stats,
    variance_weights,
)
from recal_jax.losses import (
    aggregate_loss,
    clipped_surrogate,
    global_normalizer,
    policy_loss,
)
from recal_jax.rewards import (
    router_r1_reward,
    routing_components,
    summed_reward,
)

__version__ = "0.1.0"
