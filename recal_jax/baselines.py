"""Non-RL routers: the baselines every RL router is compared against.

Each router is fit on a training table and then routes any table with the same
arms:

  router = KNNRouter(k=20).fit(table.subset("train"))
  choices = router.choose(table.subset("test"), cost_weight=100.0)   # [Q] int
  evaluate.route_metrics(table.subset("test"), choices)

`choose` picks, per query q,

  c_q = arg max_a  predicted_score[q, a] - cost_weight * expected_cost[q, a]

with ties (within 1e-9) going to the lower expected cost, then to the lower arm
index. `cost_weight` is in accuracy points per USD per query (costs are USD per
query, often 1e-5..1e-2, so useful weights are large). `predict_scores [Q, A]`
is the router's estimate of each arm's score; `expected_cost [Q, A]` comes from
training means (per (dataset, arm) when the router may use dataset ids, else
per arm), except for `ERPRouter`, which regresses cost on the features, and
`OracleRouter`, which reads the table's own costs.

Routers: `RandomRouter`, `BestSingleArm`, `OracleRouter` (the per-query upper
bound), `CategoryBestRouter` (best arm per dataset), `KNNRouter`,
`MLPScoreRegressor` (Flax MLP), `ERPRouter` (expected reward prediction, ridge
or MLP). Feature-based routers take `use_dataset_id` (append a one-hot of the
dataset to the features). Hyper-parameters are the caller's to choose on
validation data, e.g. with `select_on_validation`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from recal_jax import evaluate
from recal_jax.data.table import RoutingTable


# ----------------------------------------------------------------- helpers
def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int = 0) -> np.ndarray:
  """Mean of `values` where `mask`, NaN where nothing is logged."""
  mask = mask.astype(bool)
  total = np.where(mask, values, 0.0).sum(axis, dtype=np.float64)
  count = mask.sum(axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _dataset_one_hot(table: RoutingTable, dataset_names: Sequence[str]) -> np.ndarray:
  """[Q, len(dataset_names)] one-hot of each query's dataset, matched by name.

  A dataset the router never saw in training gets an all-zero row.
  """
  column = {name: i for i, name in enumerate(dataset_names)}
  index = np.array([column.get(name, -1) for name in table.dataset_names], np.int64)
  per_query = index[table.dataset_ids] if table.num_queries else np.zeros(0, np.int64)
  one_hot = np.zeros((table.num_queries, len(dataset_names)), np.float32)
  seen = per_query >= 0
  one_hot[np.flatnonzero(seen), per_query[seen]] = 1.0
  return one_hot


class _GroupMeans:
  """Per (dataset, arm) masked means of a [Q, A] field, falling back per arm.

    mean[d, a] = sum_{q in d} m[q, a] x[q, a] / sum_{q in d} m[q, a]

  A (dataset, arm) cell with no logged training outcome, or a dataset unseen
  in training, uses the arm's mean over all training queries (0 if the arm was
  never logged). With `by_dataset=False` every query gets the arm means.
  """

  def __init__(self, train: RoutingTable, values: np.ndarray, by_dataset: bool):
    self.by_dataset = by_dataset
    self.dataset_names = train.dataset_names
    mask = train.outcome_mask.astype(bool)
    self.arm_mean = np.nan_to_num(_masked_mean(values, mask), nan=0.0)  # [A]
    cells = np.tile(self.arm_mean, (train.num_datasets, 1))  # [D, A]
    if by_dataset:
      for d in range(train.num_datasets):
        rows = train.dataset_ids == d
        mean = _masked_mean(values[rows], mask[rows])
        cells[d] = np.where(np.isnan(mean), self.arm_mean, mean)
    self.cell_mean = cells

  def __call__(self, table: RoutingTable) -> np.ndarray:
    """[Q, A] the mean for each query's dataset (arm mean if not by dataset)."""
    if not self.by_dataset:
      return np.tile(self.arm_mean, (table.num_queries, 1))
    one_hot = _dataset_one_hot(table, self.dataset_names)  # [Q, D]
    seen = one_hot.sum(1, keepdims=True) > 0
    return np.where(seen, one_hot @ self.cell_mean, self.arm_mean[None, :])


class _Standardizer:
  """x -> (x - mean) / std with training statistics (std 0 -> 1)."""

  def __init__(self, features: np.ndarray):
    self.mean = features.mean(0) if len(features) else np.zeros(features.shape[1])
    std = features.std(0) if len(features) else np.ones(features.shape[1])
    self.std = np.where(std > 1e-8, std, 1.0)

  def __call__(self, features: np.ndarray) -> np.ndarray:
    return ((features - self.mean) / self.std).astype(np.float32)


# ------------------------------------------------------------------- base
class Router:
  """Base router: fit on train, then `predict_scores`, `expected_cost`, `choose`.

  Subclasses implement `_fit(train)` and `predict_scores(table)`. The base
  class checks that routed tables have the training arms, and fits the
  expected-cost model: per (dataset, arm) training means when
  `cost_by='dataset'`, per arm when `'arm'`; `'auto'` is `'dataset'` exactly
  when the router uses dataset ids.
  """

  use_dataset_id: bool = False
  cost_by: str = "auto"

  def __init__(self):
    self._train_arms: tuple[str, ...] | None = None
    self._train_feature_dim: int | None = None

  @property
  def name(self) -> str:
    return type(self).__name__

  # -- fitting
  def fit(self, train: RoutingTable) -> "Router":
    """Fits on `train` (usually `table.subset('train')`); returns self."""
    if train.num_queries == 0:
      raise ValueError(f"{self.name}: training table {train.name!r} has no queries")
    cost_by = self.cost_by
    if cost_by == "auto":
      cost_by = "dataset" if self.use_dataset_id else "arm"
    if cost_by not in ("dataset", "arm"):
      raise ValueError(f"{self.name}: cost_by must be 'auto', 'dataset' or 'arm', "
                       f"got {self.cost_by!r}")
    self._train_arms = train.arm_names
    self._train_feature_dim = train.feature_dim
    self._train_dataset_names = train.dataset_names
    self._cost_means = _GroupMeans(train, train.cost, by_dataset=cost_by == "dataset")
    self._fit(train)
    return self

  def _fit(self, train: RoutingTable) -> None:
    del train

  def _check_table(self, table: RoutingTable, needs_features: bool = False) -> None:
    if self._train_arms is None:
      raise ValueError(f"{self.name} is not fitted: call fit(train_table) first")
    if table.arm_names != self._train_arms:
      raise ValueError(
          f"{self.name}: table {table.name!r} has arms {table.arm_names}, the "
          f"router was fit on arms {self._train_arms}")
    if needs_features and table.feature_dim != self._train_feature_dim:
      raise ValueError(
          f"{self.name}: table {table.name!r} has feature_dim {table.feature_dim}, "
          f"the router was fit on feature_dim {self._train_feature_dim}")

  def _inputs(self, table: RoutingTable) -> np.ndarray:
    """[Q, D (+ num train datasets)] features, with the dataset one-hot if used."""
    x = np.asarray(table.features, np.float32)
    if self.use_dataset_id:
      x = np.concatenate([x, _dataset_one_hot(table, self._train_dataset_names)], 1)
    return x

  # -- routing
  def predict_scores(self, table: RoutingTable) -> np.ndarray:
    """[Q, A] predicted score of each arm on each query."""
    raise NotImplementedError(f"{self.name} does not predict scores")

  def expected_cost(self, table: RoutingTable) -> np.ndarray:
    """[Q, A] expected USD cost of each arm on each query (training means)."""
    self._check_table(table)
    return self._cost_means(table)

  def choose(self, table: RoutingTable, cost_weight: float = 0.0) -> np.ndarray:
    """[Q] arg max_a predict_scores - cost_weight * expected_cost (ties: cheaper)."""
    self._check_table(table)
    scores = self.predict_scores(table)
    cost = self.expected_cost(table)
    return evaluate._lexicographic_argmax(  # pylint: disable=protected-access
        scores - float(cost_weight) * cost, -cost).astype(np.int64)


# -------------------------------------------------------------- reference
class RandomRouter(Router):
  """Uniformly random arm per query; `cost_weight` is ignored.

  The draw depends only on `seed` and Q, so repeated calls agree.
  """

  def __init__(self, seed: int = 0):
    super().__init__()
    self.seed = seed

  def choose(self, table: RoutingTable, cost_weight: float = 0.0) -> np.ndarray:
    del cost_weight
    self._check_table(table)
    rng = np.random.default_rng(self.seed)
    return rng.integers(0, table.num_arms, size=table.num_queries).astype(np.int64)


class BestSingleArm(Router):
  """One arm for every query: arg max_a train_mean_score[a] - lambda * train_mean_cost[a].

  Means are over logged training outcomes; ties go to the cheaper arm. With
  `cost_weight=0` this is the best single arm on the training split.
  """

  cost_by = "arm"

  def _fit(self, train):
    self._score_means = _GroupMeans(train, train.score, by_dataset=False)

  def predict_scores(self, table):
    self._check_table(table)
    return self._score_means(table)

  def arm(self, cost_weight: float = 0.0) -> int:
    """The arm chosen for every query at this cost weight."""
    if self._train_arms is None:
      raise ValueError(f"{self.name} is not fitted: call fit(train_table) first")
    score, cost = self._score_means.arm_mean, self._cost_means.arm_mean
    return int(evaluate._lexicographic_argmax(  # pylint: disable=protected-access
        score - float(cost_weight) * cost, -cost))


class OracleRouter(Router):
  """The per-query oracle on the routed table's own outcomes (an upper bound).

  `choose` is `evaluate.oracle_choices(table, cost_weight)`: best logged
  score - cost_weight * cost, ties to the lower cost. Uses test labels, so it
  is a bound, never a router. `fit` only records the arms.
  """

  def predict_scores(self, table):
    self._check_table(table)
    return np.where(table.outcome_mask, table.score, 0.0)

  def expected_cost(self, table):
    self._check_table(table)
    return np.asarray(table.cost, np.float64)

  def choose(self, table, cost_weight=0.0):
    self._check_table(table)
    return evaluate.oracle_choices(table, cost_weight)


class CategoryBestRouter(Router):
  """Best arm per dataset on train: arg max_a mean_d[a] - lambda * cost_d[a].

  mean_d and cost_d are training means over the queries of dataset d (matched
  by name; an unseen dataset falls back to the overall arm means). The
  "category" baseline of ERP (arXiv 2603.20217).
  """

  use_dataset_id = True
  cost_by = "dataset"

  def _fit(self, train):
    self._score_means = _GroupMeans(train, train.score, by_dataset=True)

  def predict_scores(self, table):
    self._check_table(table)
    return self._score_means(table)


# --------------------------------------------------------- feature routers
def _top_k_stable(values: np.ndarray, k: int) -> np.ndarray:
  """[R, k] column indices of the k largest values per row, largest first.

  Ties go to the lower column index (as a stable arg sort of -values would),
  but only rows with a tie across the k-th place pay for a full sort.
  """
  if k >= values.shape[1]:
    return np.argsort(-values, axis=1, kind="stable")[:, :k]
  top = np.argpartition(-values, k - 1, axis=1)[:, :k]
  top_values = np.take_along_axis(values, top, 1)
  tied = (values >= top_values.min(1, keepdims=True)).sum(1) > k
  # Order each row's k winners by value (descending), then by column index.
  order = np.lexsort((top, -top_values), axis=1)
  top = np.take_along_axis(top, order, 1)
  if tied.any():
    top[tied] = np.argsort(-values[tied], axis=1, kind="stable")[:, :k]
  return top


class KNNRouter(Router):
  """Mean outcomes of the k nearest training queries.

    predicted_score[q, a] = sum_{n in N_k(q)} m[n, a] score[n, a] / sum_{n in N_k(q)} m[n, a]

  where N_k(q) are the k training queries most similar to q (cosine similarity
  of the features, or negative euclidean distance; ties to the lower training
  index). An arm no neighbour logged gets its training mean. With
  `use_dataset_id` the features are L2-normalised and a one-hot of the dataset
  is appended with weight `dataset_weight`, so (cosine) neighbours prefer the
  same dataset.
  """

  def __init__(self, k: int = 10, metric: str = "cosine", use_dataset_id: bool = False,
               dataset_weight: float = 1.0, cost_by: str = "auto",
               chunk_size: int = 1024):
    super().__init__()
    if k < 1:
      raise ValueError(f"KNNRouter: k must be >= 1, got {k}")
    if metric not in ("cosine", "euclidean"):
      raise ValueError(f"KNNRouter: metric must be 'cosine' or 'euclidean', got {metric!r}")
    self.k, self.metric = int(k), metric
    self.use_dataset_id, self.dataset_weight = use_dataset_id, float(dataset_weight)
    self.cost_by, self.chunk_size = cost_by, int(chunk_size)

  def _embed(self, table: RoutingTable) -> np.ndarray:
    x = np.asarray(table.features, np.float64)
    if self.use_dataset_id:
      x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
      x = np.concatenate(
          [x, self.dataset_weight * _dataset_one_hot(table, self._train_dataset_names)], 1)
    if x.shape[1] == 0:
      raise ValueError(f"KNNRouter: table {table.name!r} has no features; featurize it "
                       "or pass use_dataset_id=True")
    if self.metric == "cosine":
      x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x

  def _fit(self, train):
    self._train_x = self._embed(train)
    self._train_score = np.where(train.outcome_mask, train.score, 0.0)
    self._train_mask = train.outcome_mask.astype(np.float64)
    self._arm_mean = _GroupMeans(train, train.score, by_dataset=False).arm_mean

  def neighbours(self, table: RoutingTable) -> np.ndarray:
    """[Q, k'] indices into the training table, nearest first (k' = min(k, Q_train))."""
    self._check_table(table, needs_features=True)
    x = self._embed(table)
    k = min(self.k, len(self._train_x))
    out = np.zeros((table.num_queries, k), np.int64)
    train_sq = (self._train_x ** 2).sum(1)
    for start in range(0, table.num_queries, self.chunk_size):
      block = x[start:start + self.chunk_size]
      similarity = block @ self._train_x.T
      if self.metric == "euclidean":
        similarity = 2 * similarity - train_sq[None, :] - (block ** 2).sum(1, keepdims=True)
      out[start:start + len(block)] = _top_k_stable(similarity, k)
    return out

  def predict_scores(self, table):
    nearest = self.neighbours(table)  # [Q, k]
    total = self._train_score[nearest].sum(1)  # [Q, A]
    count = self._train_mask[nearest].sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), self._arm_mean[None, :])


@functools.lru_cache(maxsize=16)
def _mlp_functions(hidden_size: int, num_layers: int, num_arms: int, num_steps: int,
                   learning_rate: float, weight_decay: float, loss: str):
  """(init, train_all, apply) for one MLP configuration, jitted and cached.

  Cached so that refitting the same configuration (seeds, validation grids,
  train vs train+val) reuses the compiled training loop.

    init(seed, x) -> params
    train_all(params, x [Q, D], target [Q, A], mask [Q, A], prior [A])
        -> (params, losses [num_steps])
    apply(params, x, prior) -> [Q, A] predicted scores in (0, 1)
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  class MLP(nn.Module):

    @nn.compact
    def __call__(self, inputs):
      h = inputs
      for _ in range(num_layers):
        h = nn.gelu(nn.Dense(hidden_size)(h))
      # Zero-initialised head: training starts from the prior (the arm means).
      return nn.Dense(num_arms, kernel_init=nn.initializers.zeros)(h)

  model = MLP()
  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

  def init(seed, x):
    return model.init(jax.random.PRNGKey(seed), x[:1])

  def loss_fn(params, x, target, mask, prior):
    logits = model.apply(params, x) + prior
    if loss == "bce":
      per_cell = optax.sigmoid_binary_cross_entropy(logits, target)
    else:
      per_cell = (jax.nn.sigmoid(logits) - target) ** 2
    return (per_cell * mask).sum() / jax.numpy.maximum(mask.sum(), 1.0)

  @jax.jit
  def train_all(params, x, target, mask, prior):
    def step(carry, _):
      params, opt_state = carry
      value, grads = jax.value_and_grad(loss_fn)(params, x, target, mask, prior)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), value
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                       length=num_steps)
    return params, losses

  @jax.jit
  def apply(params, x, prior):
    return jax.nn.sigmoid(model.apply(params, x) + prior)

  return init, train_all, apply


class MLPScoreRegressor(Router):
  """A small Flax MLP predicting every arm's score from the query features.

    p[q, a] = sigmoid(MLP(x_q)[a] + prior[a]),   prior[a] = logit(train mean score[a])
    loss = sum_{q, a} m[q, a] l(p[q, a], score[q, a]) / sum_{q, a} m[q, a] + weight decay

  with l the binary cross-entropy (scores in [0, 1] are soft labels) or the
  squared error, m the outcome mask. x is the standardised features (training
  mean / std), plus the dataset one-hot with `use_dataset_id`. Trained
  full-batch with AdamW for `num_steps` steps inside one jitted `lax.scan`;
  the initialisation is drawn from `seed`, so a fit is deterministic. The
  defaults (one hidden layer of 32, lr 3e-3, 300 steps, decoupled weight
  decay 0.1) were picked on the synthetic table's validation split; a fit on
  3k queries takes about 1 s plus ~1-2 s of compilation.
  """

  def __init__(self, hidden_size: int = 32, num_layers: int = 1, num_steps: int = 300,
               learning_rate: float = 3e-3, weight_decay: float = 0.1,
               loss: str = "bce", use_dataset_id: bool = False, cost_by: str = "auto",
               seed: int = 0):
    super().__init__()
    if loss not in ("bce", "mse"):
      raise ValueError(f"MLPScoreRegressor: loss must be 'bce' or 'mse', got {loss!r}")
    self.hidden_size, self.num_layers = int(hidden_size), int(num_layers)
    self.num_steps, self.learning_rate = int(num_steps), float(learning_rate)
    self.weight_decay, self.loss = float(weight_decay), loss
    self.use_dataset_id, self.cost_by, self.seed = use_dataset_id, cost_by, int(seed)

  def _fit(self, train):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    raw = self._inputs(train)
    self._standardize = _Standardizer(raw)
    x = jnp.asarray(self._standardize(raw))
    mask = jnp.asarray(train.outcome_mask, jnp.float32)
    target = jnp.asarray(np.where(train.outcome_mask, train.score, 0.0), jnp.float32)
    arm_mean = np.clip(_GroupMeans(train, train.score, by_dataset=False).arm_mean,
                       1e-3, 1 - 1e-3)
    self._prior = jnp.asarray(np.log(arm_mean / (1 - arm_mean)), jnp.float32)
    init, train_all, self._apply = _mlp_functions(
        self.hidden_size, self.num_layers, train.num_arms, self.num_steps,
        self.learning_rate, self.weight_decay, self.loss)
    self._params, losses = train_all(init(self.seed, x), x, target, mask, self._prior)
    self.train_losses = np.asarray(losses)

  def predict_scores(self, table):
    self._check_table(table, needs_features=True)
    x = self._standardize(self._inputs(table))
    return np.asarray(self._apply(self._params, x, self._prior), np.float64)


class _GroupRidge:
  """Per-arm ridge regression with an unpenalised intercept per group.

    (w_a, b_a) = arg min sum_q m[q, a] (y[q, a] - b_a[g(q)] - z_q w_a)^2 + ridge |w_a|^2

  In closed form (Frisch-Waugh-Lovell): with zbar[g, a], ybar[g, a] the masked
  means over the training queries of group g, z~ = z - zbar[g(q), a] and
  y~ = y - ybar[g(q), a],

    w_a = (z~^T M_a z~ + ridge I)^{-1} z~^T M_a y~,   b_a[g] = ybar[g, a] - zbar[g, a] w_a.

  ybar is `_GroupMeans` (so with w = 0 the prediction is exactly its output),
  zbar follows the same fallback: a (group, arm) cell with no logged outcome,
  or a group unseen in training, uses the arm's overall means. Groups are
  datasets (`by_dataset`) or one group of all queries. `ridge=inf` means w = 0.
  """

  def __init__(self, train: RoutingTable, z: np.ndarray, y: np.ndarray, ridge: float,
               by_dataset: bool):
    mask = train.outcome_mask.astype(np.float64)  # [Q, A]
    self.intercept = _GroupMeans(train, y, by_dataset=by_dataset)
    self.by_dataset, self.dataset_names = by_dataset, train.dataset_names
    num_arms, dim = y.shape[1], z.shape[1]
    overall = (mask.T @ z) / np.maximum(mask.sum(0), 1.0)[:, None]  # [A, D]
    one_hot = (_dataset_one_hot(train, train.dataset_names).astype(np.float64) if by_dataset
               else np.ones((train.num_queries, 1)))  # [Q, G]
    count = one_hot.T @ mask  # [G, A]
    sums = np.einsum("qg,qa,qd->gad", one_hot, mask, z)
    self.zbar = np.where(count[..., None] > 0, sums / np.maximum(count, 1.0)[..., None],
                         overall[None])  # [G, A, D]
    self.zbar_overall = overall
    self.weights = np.zeros((dim, num_arms))  # [D, A]
    if dim == 0 or not np.isfinite(ridge):
      return
    ybar = self.intercept(train)  # [Q, A]
    groups = one_hot.argmax(1)
    for arm in range(num_arms):
      m = mask[:, arm]
      z_res = z - self.zbar[groups, arm]
      y_res = np.where(m > 0, y[:, arm] - ybar[:, arm], 0.0)
      gram = z_res.T @ (m[:, None] * z_res) + (ridge + 1e-10) * np.eye(dim)
      self.weights[:, arm] = np.linalg.solve(gram, z_res.T @ (m * y_res))

  def _zbar_rows(self, table: RoutingTable) -> np.ndarray:
    """[Q, A, D] zbar of each query's group (the arm's overall means if unseen)."""
    if not self.by_dataset:
      return np.broadcast_to(self.zbar[0], (table.num_queries,) + self.zbar.shape[1:])
    one_hot = _dataset_one_hot(table, self.dataset_names)
    seen = one_hot.sum(1) > 0
    return np.where(seen[:, None, None], self.zbar[one_hot.argmax(1)],
                    self.zbar_overall[None])

  def __call__(self, table: RoutingTable, z: np.ndarray) -> np.ndarray:
    """[Q, A] ybar[g(q), a] + (z_q - zbar[g(q), a]) w_a."""
    prior = self.intercept(table)
    if not self.weights.any():
      return prior
    residual = z @ self.weights - np.einsum("qad,da->qa", self._zbar_rows(table), self.weights)
    return prior + residual

  def group_intercepts(self) -> np.ndarray:
    """[G, A] b[g, a] = ybar[g, a] - zbar[g, a] w_a (G = 1 without datasets)."""
    ybar = self.intercept.cell_mean if self.by_dataset else self.intercept.arm_mean[None]
    return ybar - np.einsum("gad,da->ga", self.zbar, self.weights)


class ERPRouter(Router):
  """Expected reward prediction (ERP, arXiv 2603.20217), cost-aware.

  ERP predicts, from the query alone, the expected reward each arm would earn,
  then routes to arg max_a r_hat[q, a] - lambda * c_hat[q, a]. Here the
  expected reward is the expected score. With `reward_model='ridge'`
  (default) one ridge regression per arm on the standardised query features
  z (training mean / std) with an intercept per dataset that is never
  penalised (`_GroupRidge`):

    r_hat[q, a] = clip(b_a[d(q)] + z_q w_a, 0, 1)
    (w_a, b_a) = arg min sum_q m[q, a] (score[q, a] - b_a[d(q)] - z_q w_a)^2 + ridge |w_a|^2

  with m the outcome mask and d(q) the query's dataset when `use_dataset_id`
  (else a single intercept for all queries). The dataset prior is never
  shrunk: with `ridge=inf` or no features, r_hat is exactly the per-dataset
  training means of `CategoryBestRouter` (the per-arm means of the best single
  arm without dataset ids), and a finite ridge chosen on validation adds a
  query residual to it. `reward_model='mlp'` uses `MLPScoreRegressor`
  (`mlp_kwargs` are passed to it). Cost: `cost_model='ridge'` regresses cost
  per arm the same way (c_hat clipped at 0), so with `ridge=inf` it is the
  per-dataset mean cost of `CategoryBestRouter`; `'mean'` uses the training
  means of `Router` (per dataset with `use_dataset_id`).
  """

  def __init__(self, ridge: float = 1.0, reward_model: str = "ridge",
               cost_model: str = "ridge", use_dataset_id: bool = False,
               cost_by: str = "auto", mlp_kwargs: Mapping[str, Any] | None = None):
    super().__init__()
    if reward_model not in ("ridge", "mlp"):
      raise ValueError(f"ERPRouter: reward_model must be 'ridge' or 'mlp', got {reward_model!r}")
    if cost_model not in ("ridge", "mean"):
      raise ValueError(f"ERPRouter: cost_model must be 'ridge' or 'mean', got {cost_model!r}")
    if not ridge >= 0:
      raise ValueError(f"ERPRouter: ridge must be >= 0 (inf: no query features), got {ridge}")
    self.ridge, self.reward_model, self.cost_model = float(ridge), reward_model, cost_model
    self.use_dataset_id, self.cost_by = use_dataset_id, cost_by
    self.mlp_kwargs = dict(mlp_kwargs or {})

  def _query_features(self, table: RoutingTable) -> np.ndarray:
    """[Q, D] standardised query features (the dataset one-hot is not among them)."""
    return self._standardize(np.asarray(table.features, np.float32)).astype(np.float64)

  def _fit(self, train):
    self._standardize = _Standardizer(np.asarray(train.features, np.float32))
    z = self._query_features(train)
    if self.reward_model == "ridge":
      self._reward_model = _GroupRidge(train, z, train.score, self.ridge, self.use_dataset_id)
    else:
      kwargs = dict(self.mlp_kwargs)
      kwargs.setdefault("use_dataset_id", self.use_dataset_id)
      self._mlp = MLPScoreRegressor(**kwargs).fit(train)
    if self.cost_model == "ridge":
      self._cost_model = _GroupRidge(train, z, train.cost, self.ridge, self.use_dataset_id)

  def linear_model(self) -> dict[str, np.ndarray]:
    """The fitted ridge models as arrays (for `recal_jax.outcome_model`).

    Returns {feature_mean [D'], feature_std [D'], score_weights [D' + 1, A],
    cost_weights [D' + 1, A]} with D' the input width (features, + dataset
    one-hot when `use_dataset_id`): score = clip([(x - mean) / std, 1] @ W, 0, 1).
    The one-hot columns get mean 0 and std 1 and carry the per-dataset
    intercepts b[d] (the last row is then 0); without dataset ids the last row
    is the single intercept.
    """
    if self.reward_model != "ridge" or self.cost_model != "ridge":
      raise ValueError("ERPRouter.linear_model needs reward_model='ridge' and cost_model='ridge'")
    self._check_table_fitted()

    def stacked(model):
      intercepts = model.group_intercepts()  # [G, A]
      if self.use_dataset_id:
        return np.concatenate([model.weights, intercepts, np.zeros((1, intercepts.shape[1]))])
      return np.concatenate([model.weights, intercepts])

    num_datasets = len(self._train_dataset_names) if self.use_dataset_id else 0
    return {"feature_mean": np.concatenate([self._standardize.mean,
                                            np.zeros(num_datasets)]).astype(np.float32),
            "feature_std": np.concatenate([self._standardize.std,
                                           np.ones(num_datasets)]).astype(np.float32),
            "score_weights": stacked(self._reward_model).astype(np.float32),
            "cost_weights": stacked(self._cost_model).astype(np.float32)}

  def _check_table_fitted(self) -> None:
    if self._train_arms is None:
      raise ValueError(f"{self.name} is not fitted: call fit(train_table) first")

  def predict_scores(self, table):
    self._check_table(table, needs_features=True)
    if self.reward_model == "mlp":
      return self._mlp.predict_scores(table)
    return np.clip(self._reward_model(table, self._query_features(table)), 0.0, 1.0)

  def expected_cost(self, table):
    self._check_table(table, needs_features=True)
    if self.cost_model == "mean":
      return super().expected_cost(table)
    return np.maximum(self._cost_model(table, self._query_features(table)), 0.0)


# -------------------------------------------------------- model selection
@dataclasses.dataclass
class Selection:
  """Result of `select_on_validation`."""

  params: dict  # the best hyper-parameters
  router: Router  # fitted on train with `params`
  value: float  # its validation metric
  results: list  # [(params, value)] for the whole grid, in grid order


def _expand_grid(grid) -> list[dict]:
  if isinstance(grid, Mapping):
    keys = list(grid)
    return [dict(zip(keys, values))
            for values in itertools.product(*(list(grid[k]) for k in keys))]
  return [dict(params) for params in grid]


def select_on_validation(make_router: Callable[..., Router],
                         grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]],
                         train: RoutingTable, val: RoutingTable,
                         metric: str | Callable[[RoutingTable, np.ndarray], float] = "accuracy",
                         cost_weight: float = 0.0,
                         router_metric: Callable[[RoutingTable, Router], float] | None = None
                         ) -> Selection:
  """Fits `make_router(**params)` on `train` for each params; keeps the best on `val`.

  Args:
    make_router: e.g. `KNNRouter` or `lambda k: KNNRouter(k=k, use_dataset_id=True)`.
    grid: {name: [values]} (every combination) or a list of param dicts.
    train, val: the training and validation tables.
    metric: a numeric key of `evaluate.route_metrics` (higher is better, e.g.
      'accuracy', 'macro_accuracy'), or `fn(val, choices) -> float` (higher
      is better; e.g. accuracy minus lambda * cost).
    cost_weight: passed to `router.choose` on `val`.
    router_metric: `fn(val, fitted_router) -> float` (higher is better), in
      place of `metric` and `cost_weight`: for a figure of the whole router,
      e.g. the AUC of its cost-weight sweep (`recal_jax.curves`).

  Returns:
    `Selection(params, router, value, results)`; ties keep the first in grid
    order.
  """
  candidates = _expand_grid(grid)
  if not candidates:
    raise ValueError("select_on_validation: empty hyper-parameter grid")
  if isinstance(metric, str):
    key = metric
    metric = lambda table, choices: evaluate.route_metrics(table, choices)[key]  # noqa: E731
  best, results = None, []
  for params in candidates:
    router = make_router(**params).fit(train)
    value = float(router_metric(val, router) if router_metric is not None
                  else metric(val, router.choose(val, cost_weight=cost_weight)))
    results.append((params, value))
    if best is None or value > best.value:
      best = Selection(params=params, router=router, value=value, results=results)
  best.results = results
  return best
