"""ReCal inside tunix's GRPO learner, without patching tunix (optional extra).

    pip install -e '.[tunix]'        # google-tunix==0.1.7

tunix (`google-tunix`, Google's JAX post-training library) computes GRPO
advantages in `GRPOLearner._generate_and_compute_advantage`:

    rewards    = reward_manager(prompts=..., completions=..., mode=...,
                                **per_example_fields)["rewards"]
    advantages = estimator(rewards=rewards, num_generations=G)
    metric_fn(prompts=..., completions=..., rewards=rewards,
              advantages=advantages, **per_example_fields)   # each metric_fn

with the reward manager and the estimator looked up by name
(`GRPOConfig.reward_manager`, `GRPOConfig.advantage_estimator`) in
`tunix.rl.function_registry`. Every per-example field of the training input
is repeated G times (`np.repeat`), so prompt b's G samples are the contiguous
rows [b G, (b + 1) G). `TunixReCal.register()` registers three pieces under
one name (default "recal"):

* a reward manager that returns the per-function reward matrix
  `rewards [N, K]` (column k = reward_fns[k], in the order of the config's
  components; tunix's own manager returns the row sums), and reads the
  dataset of each row from a per-example field (`dataset_field`);
* an estimator, called as `est(rewards=..., num_generations=G)`, that runs

      out = advantage.recal_advantages(rewards, repeat(arange(N / G), G), N / G,
                                       dataset_ids, num_datasets, config=config,
                                       dataset_state=state, group_size=G)

  jitted, and returns `out.advantages * out.weights` (float32 `[N]`);
* `metric_fn`, to pass in `GRPOLearner(metric_fns=[recal.metric_fn])`: it
  puts ReCal's diagnostics in tunix's metrics under `recal/...`.

The estimator does not receive the dataset ids or the mode: the manager keeps
them keyed by the identity of the `rewards` array it returns, which tunix
hands to the estimator and the metric functions unchanged (checked: a
`rewards` the manager did not make is a `ValueError`).

Folding the weights into the advantages. tunix's GRPO loss has no per-sample
weight. Its per-token policy-gradient term, max(-A r, -A clip(r)) (and the
dual-clip min(-c A, .)), is positively homogeneous in A, so for w >= 0
(ReCal's weights are) it equals w times the term with A: folding is exact
for the clipped policy-gradient term. It is not for the KL term (beta * KL is
not weighted), and tunix divides by an unweighted count (its
`loss_agg_mode`), so the folded loss is `recal_jax.losses.policy_loss` with
`normalizer=global_normalizer(mask, mode)` (unnormalised weights), not its
weighted average: the two differ by the batch's mean weight, a per-batch
step-size factor.

Limits (none of them is in ReCal's maths; each is how tunix calls the estimator):

* Statistics are per processing chunk. tunix calls the estimator once per
  chunk of micro-batches it merges for rollout (at least
  `train_micro_batch_size` prompts, as many as
  lcm(rollout_micro_batch_size, compute_logps_micro_batch_size) needs, cut
  at gradient-accumulation boundaries; a last short batch of the data when
  `train_micro_batch_size` is unset), not once per optimiser step: the
  variance weights' mean, the batch dataset normalisation and the running
  statistics' updates are per chunk.
* The running per-dataset statistics (`config.dataset_norm == "running"`)
  live in this object (`dataset_state`), not in tunix's checkpoints: a
  resumed run restarts them unless you save and restore `dataset_state`
  yourself. Evaluation chunks (mode "eval") read the state and do not
  update it.
* `rewards` reach the estimator as the float64 matrix tunix builds; they are
  cast to float32.

Upstream hooks that would remove these limits: the estimator called with the
per-example fields and the mode (`est(rewards=..., num_generations=G,
mode=..., **fields)`) and allowed to return per-sample weights that the loss
multiplies in (with the weighted normaliser); an estimator state in
`TrainExample` / the trainer's checkpointed state; an option to compute
advantages once per optimiser step (per mini-batch) rather than per rollout
chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import threading
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import advantage
from recal_jax import calibration

try:  # the optional extra
  from tunix.rl import function_registry
  from tunix.rl import reward_manager as reward_manager_lib
except ImportError as e:  # pragma: no cover - exercised only without the extra
  raise ImportError("recal_jax.integrations.tunix needs the optional extra: "
                    "pip install -e '.[tunix]' (google-tunix==0.1.7)") from e

_KEEP = 16  # pending rewards / diagnostics kept, if a consumer never comes


def _config_names(config: advantage.ReCalConfig) -> tuple[str, ...]:
  return tuple(config.components)


@functools.partial(jax.jit, static_argnames=("config", "num_generations", "num_datasets"))
def _recal(components, dataset_ids, dataset_state, *, config, num_generations,
           num_datasets):
  n = components.shape[0]
  num_groups = n // num_generations
  group_ids = jnp.repeat(jnp.arange(num_groups, dtype=jnp.int32), num_generations)
  return advantage.recal_advantages(
      components, group_ids, num_groups, dataset_ids, num_datasets,
      config=config, dataset_state=dataset_state, group_size=num_generations)


def recal_for_tunix(components, dataset_ids, dataset_state, *, config,
                    num_generations: int, num_datasets: int) -> advantage.ReCalOutput:
  """`recal_advantages` on tunix's layout: G contiguous rows per prompt (jitted)."""
  return _recal(jnp.asarray(components, jnp.float32), jnp.asarray(dataset_ids, jnp.int32),
                dataset_state, config=config, num_generations=num_generations,
                num_datasets=num_datasets)


@dataclasses.dataclass
class _Pending:
  rewards: np.ndarray  # [N, K], the very array handed to tunix
  dataset_ids: np.ndarray  # [N] int32
  train: bool


class TunixReCal:
  """ReCal as a tunix reward manager + advantage estimator + metric function.

  Usage:

      recal = TunixReCal(advantage.method_config("recal"), num_datasets=7,
                         dataset_field="dataset_id")
      recal.register()                      # name "recal"
      learner = GRPOLearner(
          rl_cluster=cluster,
          algo_config=GRPOConfig(num_generations=G, reward_manager="recal",
                                 advantage_estimator="recal"),
          reward_fns=[format_fn, correctness_fn, cost_fn],   # config order
          metric_fns=[recal.metric_fn])

  Attributes:
    config: the `ReCalConfig` (static).
    num_datasets: static D; dataset ids must lie in [0, D).
    dataset_field: name of the per-example field holding the dataset id (an
      int, or a name listed in `dataset_names`).
    dataset_names: optional names of the D datasets, in id order.
    dataset_state: the running per-dataset statistics (for
      `dataset_norm == "running"`), updated by training chunks.
  """

  def __init__(self, config: advantage.ReCalConfig = advantage.method_config("recal"),
               *, num_datasets: int = 1, dataset_field: str = "dataset_id",
               dataset_names: Optional[Sequence[str]] = None, name: str = "recal"):
    if not isinstance(num_datasets, int) or num_datasets < 1:
      raise ValueError(f"num_datasets must be a positive int, got {num_datasets!r}")
    if dataset_names is not None and len(dataset_names) != num_datasets:
      raise ValueError(f"dataset_names has {len(dataset_names)} names for "
                       f"num_datasets={num_datasets}")
    self.config = config
    self.num_datasets = num_datasets
    self.dataset_field = dataset_field
    self.dataset_names = None if dataset_names is None else tuple(dataset_names)
    self.name = name
    self.dataset_state = calibration.init_dataset_stats(num_datasets)
    self._lock = threading.Lock()
    self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
    self._diagnostics: collections.OrderedDict[int, tuple[np.ndarray, dict]] = (
        collections.OrderedDict())

  # ------------------------------------------------------------ registration
  def register(self) -> "TunixReCal":
    """Registers the manager and the estimator under `self.name` in tunix."""
    recal = self

    class ReCalRewardManager(reward_manager_lib.SequenceRewardManager):
      """Returns the per-function reward matrix [N, K] (see TunixReCal)."""

      def __call__(self, prompts, completions, **kwargs):
        return recal.rewards(self, prompts, completions, **kwargs)

    function_registry.register_reward_manager(self.name)(ReCalRewardManager)
    function_registry.register_advantage_estimator(self.name)(self.estimator)
    return self

  # ------------------------------------------------------------- the manager
  def _dataset_ids(self, kwargs: dict, n: int) -> np.ndarray:
    if self.dataset_field not in kwargs:
      if self.num_datasets == 1:
        return np.zeros((n,), np.int32)
      raise ValueError(f"the training input has no per-example field "
                       f"{self.dataset_field!r} (the dataset id) and "
                       f"num_datasets={self.num_datasets}; fields: {sorted(kwargs)}")
    raw = np.asarray(kwargs[self.dataset_field]).reshape(-1)
    if raw.shape != (n,):
      raise ValueError(f"field {self.dataset_field!r} has {raw.shape[0]} values "
                       f"for {n} completions")
    if raw.dtype.kind in "US O":
      if self.dataset_names is None:
        raise ValueError(f"field {self.dataset_field!r} holds names ({raw[0]!r}); "
                         f"pass dataset_names=... to map them to ids")
      index = {name: i for i, name in enumerate(self.dataset_names)}
      unknown = [str(v) for v in raw if str(v) not in index]
      if unknown:
        raise ValueError(f"field {self.dataset_field!r}: unknown dataset "
                         f"{unknown[0]!r}; known: {self.dataset_names}")
      ids = np.array([index[str(v)] for v in raw], np.int32)
    else:
      if raw.dtype.kind not in "iu":
        raise ValueError(f"field {self.dataset_field!r} must hold int ids or "
                         f"names, got dtype {raw.dtype}")
      ids = raw.astype(np.int32)
    bad = (ids < 0) | (ids >= self.num_datasets)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"field {self.dataset_field!r}[{i}] = {int(ids[i])} is "
                       f"outside [0, {self.num_datasets})")
    return ids

  def rewards(self, manager, prompts, completions, **kwargs) -> dict[str, Any]:
    """The manager's body: `{"rewards": [N, K] float64, "log_metrics": ...}`."""
    n, fns = len(prompts), manager.reward_fns
    names = _config_names(self.config)
    if len(names) != len(fns):
      raise ValueError(f"{len(fns)} reward functions for the config's "
                       f"{len(names)} components {names}")
    algo_params = dataclasses.asdict(manager.algo_config)
    matrix = np.zeros((n, len(fns)))
    for k, fn in enumerate(fns):
      call_kwargs = dict(kwargs)
      for param in inspect.signature(fn).parameters:  # tunix's convention
        if param in algo_params and param not in call_kwargs and param not in (
            "self", "prompts", "completions", "kwargs"):
          call_kwargs[param] = algo_params[param]
      r = np.asarray(fn(prompts=prompts, completions=completions, **call_kwargs),
                     np.float64).reshape(-1)
      if r.shape != (n,):
        raise ValueError(f"reward function {getattr(fn, '__name__', fn)!r} "
                         f"returned {r.shape[0]} values for {n} completions")
      matrix[:, k] = r
    advantage.check_inputs(matrix, np.zeros(n, np.int32), 1)  # names a NaN row
    pending = _Pending(rewards=matrix, dataset_ids=self._dataset_ids(kwargs, n),
                       train=str(kwargs.get("mode", "train")) == "train")
    with self._lock:
      self._pending[id(matrix)] = pending
      while len(self._pending) > _KEEP:
        self._pending.popitem(last=False)
    return {"rewards": matrix,
            "log_metrics": manager._prepare_log_metrics(prompts, completions, matrix)}  # pylint: disable=protected-access

  # ----------------------------------------------------------- the estimator
  def estimator(self, rewards, num_generations: int) -> np.ndarray:
    """tunix's `est(rewards=..., num_generations=G)` -> `[N]` float32."""
    with self._lock:
      pending = self._pending.pop(id(rewards), None)
    if pending is None or pending.rewards is not rewards:
      raise ValueError(
          f"advantage estimator {self.name!r} got rewards that its reward "
          f"manager did not return: set GRPOConfig(reward_manager={self.name!r}, "
          f"advantage_estimator={self.name!r}) and call register()")
    n = rewards.shape[0]
    if n % num_generations:
      raise ValueError(f"{n} completions are not groups of num_generations="
                       f"{num_generations}")
    with self._lock:
      out = recal_for_tunix(rewards, pending.dataset_ids, self.dataset_state,
                            config=self.config, num_generations=num_generations,
                            num_datasets=self.num_datasets)
      if pending.train and out.dataset_state is not None:
        self.dataset_state = out.dataset_state
      folded = np.asarray(out.advantages * out.weights, np.float32)
      self._diagnostics[id(rewards)] = (rewards, jax.device_get(out.diagnostics))
      while len(self._diagnostics) > _KEEP:
        self._diagnostics.popitem(last=False)
    return folded

  # ------------------------------------------------------- the metric function
  def metric_fn(self, rewards, **unused) -> dict[str, tuple[Any, Callable]]:
    """ReCal's diagnostics as tunix metrics `recal/<name>[/<component|dataset>]`."""
    del unused
    with self._lock:
      entry = self._diagnostics.pop(id(rewards), None)
    if entry is None or entry[0] is not rewards:
      return {}
    return self.metrics(entry[1])

  def metrics(self, diagnostics: dict) -> dict[str, tuple[Any, Callable]]:
    """Flattens diagnostics: `[K]` by component name, `[D]` by dataset."""
    names = _config_names(self.config)
    datasets = self.dataset_names or tuple(str(d) for d in range(self.num_datasets))
    out = {}
    for key, value in diagnostics.items():
      value = np.asarray(value)
      if value.ndim == 0:
        out[f"{self.name}/{key}"] = (float(value), np.mean)
        continue
      labels = datasets if key.startswith("dataset_") else names
      for label, v in zip(labels, value.reshape(-1)):
        out[f"{self.name}/{key}/{label}"] = (float(v), np.mean)
    return out
