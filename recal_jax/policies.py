"""Router policies: which arm (model, strategy) answers a query.

Two policies share one interface (`RouterPolicy`), so rollouts, the loss and
the training loop do not care which one is used:

* `CategoricalPolicy`: one decision per query. An MLP maps query features to a
  query embedding `h(x) [E]`; every arm has a learned embedding `e_a [E]` and a
  bias `b_a`, and

      logit_a(x) = <h(x), e_a> + b_a,     pi(a | x) = softmax_a(logit(x)).

  Arms enter only through `(e_a, b_a)`, so an arm can be added later
  (`add_arms`) without touching the query network. A route is one token: the
  arm index (`route_length == 1`).

* `TokenPolicy`: the route is written as tokens `<strategy> <model> <eos>` by a
  small GRU decoder conditioned on the query features. Every step samples from
  the FULL vocabulary (special tokens, all strategy names, all model names), so
  the policy can write malformed routes: wrong order (`<model> <strategy>`),
  a (strategy, model) pair that is not an arm, a missing `<eos>`, or an early
  `<eos>`. `parse_routes` maps a token sequence to its arm index, or -1 when it
  is malformed; the format reward is therefore something the policy has to
  learn. `route_length == 3` and the loss aggregates over tokens.

Shapes: B queries, D features, A arms, T = `route_length` tokens, V vocabulary.

`RouterPolicy` methods (all pure, jit-able; `params` is a Flax linen variable
dict):

  init(rng, feature_dim)                       -> params
  sample(params, features [B, D], rng[, arm_mask [B * R, A]], repeats=R)
                                               -> Routes [B * R] (R routes per
                                                  query, query-major; the
                                                  categorical policy draws only
                                                  arms whose mask is True)
  greedy(params, features [B, D][, arm_mask])  -> Routes (argmax each token)
  log_probs_and_entropy(params, features [B, D], tokens [B * R, T], repeats=R)
                                               -> (log_probs [B * R, T], entropy [B * R, T])

`repeats` (default 1): row i of `features` is the query of rows
i * R .. i * R + R - 1 of the routes, so the query network runs once per
query, not once per route (G sampled routes per query share one encoding).
  parse_routes(tokens [..., T])                -> arm indices [...] (-1 malformed)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Params = Any

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


class Routes(NamedTuple):
  """Routes for B rows (queries or rollouts).

  tokens:      [B, T] int32   the written route (for the categorical policy the
                              arm index, T = 1).
  arm_indices: [B] int32      the parsed arm, -1 where the route is malformed.
  log_probs:   [B, T] float32 log pi(token_t | query, tokens_<t).
  token_mask:  [B, T] bool    tokens that belong to the route: everything up to
                              and including the first `<eos>` (all of them when
                              `<eos>` is missing).
  """
  tokens: jax.Array
  arm_indices: jax.Array
  log_probs: jax.Array
  token_mask: jax.Array


class RouterPolicy(Protocol):
  """What rollouts and the learner need from a router (see module docstring)."""

  num_arms: int
  route_length: int

  def init(self, rng: jax.Array, feature_dim: int) -> Params:
    ...

  def sample(self, params: Params, features: jax.Array, rng: jax.Array,
             arm_mask: jax.Array | None = None, repeats: int = 1) -> Routes:
    ...

  def greedy(self, params: Params, features: jax.Array,
             arm_mask: jax.Array | None = None) -> Routes:
    ...

  def log_probs_and_entropy(self, params: Params, features: jax.Array,
                            tokens: jax.Array, repeats: int = 1
                            ) -> tuple[jax.Array, jax.Array]:
    ...

  def parse_routes(self, tokens: jax.Array) -> jax.Array:
    ...


def repeat_rows(x: jax.Array, repeats: int) -> jax.Array:
  """[B, ...] -> [B * repeats, ...]: each row `repeats` times, in order."""
  return x if repeats == 1 else jnp.repeat(x, repeats, axis=0)


def _entropy_from_logits(logits: jax.Array) -> jax.Array:
  """[..., V] logits -> [...] entropy in nats."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


class MLP(nn.Module):
  """[LayerNorm] then Dense + GELU layers: [B, D] -> [B, hidden_dims[-1]].

  The input LayerNorm matters for sparse, L2-normalised text features (hashed
  n-grams have entries ~ 1/sqrt(nnz)): without it the first layer's outputs
  barely depend on the query and the policy learns a global arm preference
  long before it learns to route.
  """
  hidden_dims: Sequence[int]
  input_layer_norm: bool = True

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    hidden = inputs
    if self.input_layer_norm:
      hidden = nn.LayerNorm(name="input_norm")(hidden)
    for i, width in enumerate(self.hidden_dims):
      hidden = nn.gelu(nn.Dense(width, name=f"dense_{i}")(hidden))
    return hidden


# --------------------------------------------------------------- categorical
class CategoricalRouterNetwork(nn.Module):
  """features [B, D] -> arm logits [B, A] = h(x) @ arm_embeddings.T + arm_bias."""
  num_arms: int
  hidden_dims: Sequence[int] = (128, 128)
  embedding_dim: int = 64
  # Small arm embeddings start the policy near uniform, which keeps early
  # groups diverse enough to have a reward spread.
  arm_init_scale: float = 0.01

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    query_embedding = nn.Dense(self.embedding_dim, name="query_projection")(
        MLP(self.hidden_dims, name="query_encoder")(features))
    arm_embeddings = self.param(
        "arm_embeddings", nn.initializers.normal(self.arm_init_scale),
        (self.num_arms, self.embedding_dim))
    arm_bias = self.param("arm_bias", nn.initializers.zeros, (self.num_arms,))
    return query_embedding @ arm_embeddings.T + arm_bias


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy:
  """One categorical decision over A arms per query (`route_length == 1`)."""
  num_arms: int
  hidden_dims: tuple[int, ...] = (128, 128)
  embedding_dim: int = 64

  route_length = 1

  @property
  def network(self) -> CategoricalRouterNetwork:
    return CategoricalRouterNetwork(self.num_arms, tuple(self.hidden_dims),
                                    self.embedding_dim)

  def init(self, rng: jax.Array, feature_dim: int) -> Params:
    return self.network.init(rng, jnp.zeros((1, feature_dim), jnp.float32))

  def logits(self, params: Params, features: jax.Array) -> jax.Array:
    """[B, D] -> [B, A]."""
    return self.network.apply(params, features)

  def _routes(self, logits: jax.Array, arm_indices: jax.Array) -> Routes:
    log_probs = jnp.take_along_axis(
        jax.nn.log_softmax(logits, -1), arm_indices[:, None], axis=-1)
    return Routes(tokens=arm_indices[:, None].astype(jnp.int32),
                  arm_indices=arm_indices.astype(jnp.int32),
                  log_probs=log_probs,
                  token_mask=jnp.ones_like(log_probs, dtype=bool))

  def sample(self, params: Params, features: jax.Array, rng: jax.Array,
             arm_mask: jax.Array | None = None, repeats: int = 1) -> Routes:
    """`arm_mask [B * R, A]`: only True arms are drawn (`available_logits`);
    the recorded log-probs are the unmasked policy's, as
    `log_probs_and_entropy` computes them, so the first PPO ratio is exactly 1."""
    logits = repeat_rows(self.logits(params, features), repeats)
    return self._routes(logits, jax.random.categorical(
        rng, available_logits(logits, arm_mask), axis=-1))

  def greedy(self, params: Params, features: jax.Array,
             arm_mask: jax.Array | None = None) -> Routes:
    logits = self.logits(params, features)
    return self._routes(logits, jnp.argmax(available_logits(logits, arm_mask), axis=-1))

  def log_probs_and_entropy(self, params: Params, features: jax.Array,
                            tokens: jax.Array, repeats: int = 1
                            ) -> tuple[jax.Array, jax.Array]:
    """features [B, D], tokens [B * R, 1] -> log_probs, entropy [B * R, 1]."""
    logits = repeat_rows(self.logits(params, features), repeats)
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens, axis=-1)
    return log_probs, _entropy_from_logits(logits)[:, None]

  def parse_routes(self, tokens: jax.Array) -> jax.Array:
    """[..., 1] -> [...]; every arm index is a valid route."""
    return tokens[..., 0].astype(jnp.int32)

  def arm_log_probs(self, params: Params, features: jax.Array) -> jax.Array:
    """[B, D] -> [B, A] log-probabilities of the arms."""
    return jax.nn.log_softmax(self.logits(params, features), axis=-1)

  def action_distribution(self, params: Params, features: jax.Array) -> jax.Array:
    """[B, D] -> [B, A] probabilities (rows sum to 1)."""
    return jax.nn.softmax(self.logits(params, features), axis=-1)


def available_logits(logits: jax.Array, arm_mask: jax.Array | None) -> jax.Array:
  """logits [B, A] with -inf where `arm_mask` [B, A] is False (the arm was not run
  on that query); a row with no True entry is left as it is."""
  if arm_mask is None:
    return logits
  arm_mask = jnp.asarray(arm_mask, bool)
  arm_mask = arm_mask | ~jnp.any(arm_mask, axis=-1, keepdims=True)
  return jnp.where(arm_mask, logits, -jnp.inf)


def add_arms(params: Params, num_new_arms: int, rng: jax.Array,
             init_scale: float = 0.01) -> Params:
  """Appends `num_new_arms` fresh arms to a `CategoricalPolicy`'s params.

  The query network is shared; each new arm gets a small random embedding and
  a bias equal to the mean existing bias, so it starts close to the average
  arm. Build the new policy with `num_arms + num_new_arms`.
  """
  inner = params["params"]
  embeddings, bias = inner["arm_embeddings"], inner["arm_bias"]
  new_embeddings = init_scale * jax.random.normal(
      rng, (num_new_arms, embeddings.shape[1]), embeddings.dtype)
  new_bias = jnp.full((num_new_arms,), jnp.mean(bias), bias.dtype)
  inner = dict(inner, arm_embeddings=jnp.concatenate([embeddings, new_embeddings]),
               arm_bias=jnp.concatenate([bias, new_bias]))
  return dict(params, params=inner)


# --------------------------------------------------------------------- token
class TokenRouterNetwork(nn.Module):
  """A GRU decoder over the route vocabulary, conditioned on query features.

  The query features are encoded once into the initial GRU state and a context
  vector fed at every step together with the embedding of the previous token
  (`<bos>` at t = 0) and a learned position embedding.
  """
  vocab_size: int
  route_length: int
  bos_id: int
  hidden_dims: Sequence[int] = (128,)
  state_dim: int = 128
  token_embedding_dim: int = 32

  def setup(self):
    self.query_encoder = MLP(self.hidden_dims)
    self.initial_state = nn.Dense(self.state_dim)
    self.token_embedding = nn.Embed(self.vocab_size, self.token_embedding_dim)
    self.position_embedding = self.param(
        "position_embedding", nn.initializers.normal(0.02),
        (self.route_length, self.token_embedding_dim))
    self.cell = nn.GRUCell(features=self.state_dim)
    self.output_head = nn.Dense(self.vocab_size)

  def encode(self, features: jax.Array, repeats: int = 1
             ) -> tuple[jax.Array, jax.Array]:
    """[B, D] -> (initial GRU state, query context) [B * R, S], [B * R, H]:
    each query encoded once, its encoding repeated R times."""
    context = self.query_encoder(features)
    return (repeat_rows(jnp.tanh(self.initial_state(context)), repeats),
            repeat_rows(context, repeats))

  def step(self, state: jax.Array, context: jax.Array, previous_tokens: jax.Array,
           position: int) -> tuple[jax.Array, jax.Array]:
    """One decoder step: -> (new state [B, S], logits [B, V])."""
    inputs = jnp.concatenate([
        self.token_embedding(previous_tokens) + self.position_embedding[position],
        context], axis=-1)
    state, outputs = self.cell(state, inputs)
    return state, self.output_head(outputs)

  def __call__(self, features: jax.Array, tokens: jax.Array,
               repeats: int = 1) -> jax.Array:
    """Teacher forcing: features [B, D], tokens [B * R, T] -> logits [B * R, T, V]."""
    state, context = self.encode(features, repeats)
    previous = jnp.full(tokens.shape[:1], self.bos_id, jnp.int32)
    all_logits = []
    for position in range(self.route_length):
      state, logits = self.step(state, context, previous, position)
      all_logits.append(logits)
      previous = tokens[:, position]
    return jnp.stack(all_logits, axis=1)

  def decode(self, features: jax.Array, rng: jax.Array | None,
             repeats: int = 1) -> tuple[jax.Array, jax.Array]:
    """Samples (or, with `rng=None`, argmaxes) R routes per query token by token.

    Returns tokens [B * R, T] int32 and their log-probs [B * R, T].
    """
    state, context = self.encode(features, repeats)
    previous = jnp.full(state.shape[:1], self.bos_id, jnp.int32)
    tokens, log_probs = [], []
    for position in range(self.route_length):
      state, logits = self.step(state, context, previous, position)
      if rng is None:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      else:
        token = jax.random.categorical(
            jax.random.fold_in(rng, position), logits, axis=-1).astype(jnp.int32)
      log_probs.append(jnp.take_along_axis(
          jax.nn.log_softmax(logits, -1), token[:, None], axis=-1)[:, 0])
      tokens.append(token)
      previous = token
    return jnp.stack(tokens, axis=1), jnp.stack(log_probs, axis=1)

  def route_log_probs(self, features: jax.Array, strategy_tokens: jax.Array,
                      arm_strategy: jax.Array, arm_model_tokens: jax.Array,
                      eos_id: int) -> jax.Array:
    """log pi(<strategy> <model> <eos> | query) of every arm: [Q, D] -> [Q, A].

    Teacher forcing with shared prefixes: the first step runs once per query,
    the second once per (query, strategy), only the third once per (query,
    arm): Q (1 + S + A) decoder steps instead of 3 Q A.

    Args:
      features: [Q, D] query features.
      strategy_tokens: [S] token ids of the strategies.
      arm_strategy: [A] index into `strategy_tokens` of each arm's strategy.
      arm_model_tokens: [A] token id of each arm's model.
      eos_id: token id of `<eos>`.
    """
    q = features.shape[0]
    num_strategies, num_arms = strategy_tokens.shape[0], arm_model_tokens.shape[0]
    state, context = self.encode(features)
    state, logits = self.step(state, context, jnp.full((q,), self.bos_id, jnp.int32), 0)
    first = jax.nn.log_softmax(logits, -1)  # [Q, V]
    tile = lambda x, n: jnp.tile(x, (n,) + (1,) * (x.ndim - 1))  # noqa: E731
    state, logits = self.step(tile(state, num_strategies), tile(context, num_strategies),
                              jnp.repeat(strategy_tokens, q), 1)
    second = jax.nn.log_softmax(logits, -1).reshape(num_strategies, q, -1)  # [S, Q, V]
    state = state.reshape(num_strategies, q, -1)[arm_strategy].reshape(num_arms * q, -1)
    _, logits = self.step(state, tile(context, num_arms), jnp.repeat(arm_model_tokens, q), 2)
    third = jax.nn.log_softmax(logits, -1).reshape(num_arms, q, -1)  # [A, Q, V]
    arm_strategy_tokens = strategy_tokens[arm_strategy]
    total = (first[:, arm_strategy_tokens].T
             + second[arm_strategy, :, arm_model_tokens]
             + third[:, :, eos_id])
    return total.T


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
  """Writes routes `<strategy> <model> <eos>` over the full vocabulary.

  vocabulary:  special tokens, then strategy names, then model names.
  arm_routes:  for each arm, its (strategy, model) names.
  """
  vocabulary: tuple[str, ...]
  strategy_names: tuple[str, ...]
  model_names: tuple[str, ...]
  arm_routes: tuple[tuple[str, str], ...]
  hidden_dims: tuple[int, ...] = (128,)
  state_dim: int = 128
  token_embedding_dim: int = 32

  route_length = 3

  @classmethod
  def for_arms(cls, arm_models: Sequence[str], arm_strategies: Sequence[str],
               **network_kwargs) -> "TokenPolicy":
    """The policy for a table's arms (`table.arm_models`, `table.arm_strategies`)."""
    strategies = tuple(dict.fromkeys(arm_strategies))
    models = tuple(dict.fromkeys(arm_models))
    overlap = set(strategies) & set(models) | (set(strategies) | set(models)) & set(SPECIAL_TOKENS)
    if overlap:
      raise ValueError(f"strategy / model / special token names collide: {sorted(overlap)}")
    return cls(vocabulary=SPECIAL_TOKENS + strategies + models,
               strategy_names=strategies, model_names=models,
               arm_routes=tuple(zip(arm_strategies, arm_models)),
               **{k: tuple(v) if isinstance(v, list) else v
                  for k, v in network_kwargs.items()})

  @property
  def num_arms(self) -> int:
    return len(self.arm_routes)

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  @property
  def eos_id(self) -> int:
    return self.vocabulary.index(EOS)

  @property
  def bos_id(self) -> int:
    return self.vocabulary.index(BOS)

  @property
  def network(self) -> TokenRouterNetwork:
    return TokenRouterNetwork(
        vocab_size=self.vocab_size, route_length=self.route_length,
        bos_id=self.bos_id, hidden_dims=tuple(self.hidden_dims),
        state_dim=self.state_dim, token_embedding_dim=self.token_embedding_dim)

  def route_tokens(self, arm_index: int) -> tuple[int, int, int]:
    """The well-formed token ids of arm `arm_index`."""
    strategy, model = self.arm_routes[arm_index]
    return (self.vocabulary.index(strategy), self.vocabulary.index(model), self.eos_id)

  def detokenize(self, tokens: Sequence[int]) -> str:
    return " ".join(self.vocabulary[int(t)] for t in tokens)

  def _route_lookup(self) -> np.ndarray:
    """[V, V] int32: arm index of (strategy token, model token), else -1."""
    lookup = np.full((self.vocab_size, self.vocab_size), -1, np.int32)
    for arm, (strategy, model) in enumerate(self.arm_routes):
      lookup[self.vocabulary.index(strategy), self.vocabulary.index(model)] = arm
    return lookup

  def parse_routes(self, tokens: jax.Array) -> jax.Array:
    """tokens [..., 3] -> arm index [...], -1 where malformed.

    Well formed means: token 0 a strategy, token 1 a model, token 2 `<eos>`,
    and the (strategy, model) pair one of the arms. Anything else (wrong
    order, unknown pair, special tokens in the route, missing `<eos>`) is -1.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    arm = jnp.asarray(self._route_lookup())[tokens[..., 0], tokens[..., 1]]
    return jnp.where(tokens[..., 2] == self.eos_id, arm, -1).astype(jnp.int32)

  def token_mask(self, tokens: jax.Array) -> jax.Array:
    """[B, T] -> [B, T] bool: tokens up to and including the first `<eos>`."""
    is_eos = (tokens == self.eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos
    return eos_before == 0

  def init(self, rng: jax.Array, feature_dim: int) -> Params:
    return self.network.init(rng, jnp.zeros((1, feature_dim), jnp.float32),
                             jnp.zeros((1, self.route_length), jnp.int32))

  def _routes(self, tokens: jax.Array, log_probs: jax.Array) -> Routes:
    return Routes(tokens=tokens, arm_indices=self.parse_routes(tokens),
                  log_probs=log_probs, token_mask=self.token_mask(tokens))

  def sample(self, params: Params, features: jax.Array, rng: jax.Array,
             arm_mask: jax.Array | None = None, repeats: int = 1) -> Routes:
    """`arm_mask` is not applied: the route is written token by token and can
    name any arm (or none); a sampled arm with no outcome is masked out of the
    advantage and the loss (`rollout.lookup_outcomes`)."""
    del arm_mask
    tokens, log_probs = self.network.apply(
        params, features, rng, repeats, method=TokenRouterNetwork.decode)
    return self._routes(tokens, log_probs)

  def greedy(self, params: Params, features: jax.Array,
             arm_mask: jax.Array | None = None) -> Routes:
    del arm_mask  # see `sample`
    tokens, log_probs = self.network.apply(
        params, features, None, method=TokenRouterNetwork.decode)
    return self._routes(tokens, log_probs)

  def log_probs_and_entropy(self, params: Params, features: jax.Array,
                            tokens: jax.Array, repeats: int = 1
                            ) -> tuple[jax.Array, jax.Array]:
    """features [B, D], tokens [B * R, 3] -> log_probs, entropy [B * R, 3]."""
    logits = self.network.apply(params, features, tokens, repeats)
    log_probs = jnp.take_along_axis(
        jax.nn.log_softmax(logits, -1), tokens[..., None], axis=-1)[..., 0]
    return log_probs, _entropy_from_logits(logits)

  def arm_log_probs(self, params: Params, features: jax.Array) -> jax.Array:
    """[Q, D] -> [Q, A] log-probability of writing each arm's well-formed route.

    The rest of the probability mass (1 - sum over arms) is on malformed routes.
    """
    strategy_tokens = np.asarray([self.vocabulary.index(s) for s in self.strategy_names], np.int32)
    arm_strategy = np.asarray([self.strategy_names.index(s) for s, _ in self.arm_routes], np.int32)
    arm_models = np.asarray([self.vocabulary.index(m) for _, m in self.arm_routes], np.int32)
    return self.network.apply(params, features, strategy_tokens, arm_strategy, arm_models,
                              self.eos_id, method=TokenRouterNetwork.route_log_probs)

  def next_token_distribution(self, params: Params, features: jax.Array,
                              tokens: jax.Array) -> jax.Array:
    """[B, T, V] probabilities of every next token under teacher forcing."""
    return jax.nn.softmax(self.network.apply(params, features, tokens), axis=-1)


def make_policy(policy_config, table) -> RouterPolicy:
  """A policy for `table`'s arms from a config with fields.

  kind:                'categorical' or 'token'
  hidden_dims:         query-encoder widths
  embedding_dim:       (categorical) query / arm embedding size
  state_dim:           (token) GRU state size
  token_embedding_dim: (token) token embedding size
  """
  kind = policy_config.kind
  hidden_dims = tuple(policy_config.hidden_dims)
  if kind == "categorical":
    return CategoricalPolicy(num_arms=table.num_arms, hidden_dims=hidden_dims,
                             embedding_dim=int(policy_config.embedding_dim))
  if kind == "token":
    return TokenPolicy.for_arms(
        table.arm_models, table.arm_strategies, hidden_dims=hidden_dims,
        state_dim=int(policy_config.state_dim),
        token_embedding_dim=int(policy_config.token_embedding_dim))
  raise ValueError(f"policy.kind must be 'categorical' or 'token', got {kind!r}")
