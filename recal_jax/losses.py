"""Policy-gradient losses: clipped surrogate, KL, entropy and aggregation.

Implements the objective of docs/METHOD.md:

  L = (1/Z) sum_i w_i sum_t m_it [ pg_it + kl_coef * kl_it - ent_coef * H_it ]

(the sum over t is replaced by a per-sequence mean or a constant-normalised
sum in the `seq-mean-*` modes), with `pg` the clipped surrogate, `kl` an
estimator of KL(pi || pi_ref), `H` the token entropy, `m` the token mask,
`w` the per-rollout sample weights (ReCal's variance-aware omega) and `Z` a
*global* normaliser.

Shapes: N rollouts (rows) x T tokens (a routing decision is one token, T=1).
Rows are never split across micro-batches or devices; only the row axis is.

Aggregation modes (names as in verl), with m the mask, n_i = sum_t m_it the
valid tokens of row i, v_i = [n_i > 0] whether row i is a real rollout, and
w_i the sample weights (1 when not given):

  mode                      numerator                          Z
  token-mean                sum_i w_i sum_t m_it l_it          sum_i w_i n_i
  token-sum                 sum_i w_i sum_t m_it l_it          1
  seq-mean-token-sum        sum_i w_i sum_t m_it l_it          sum_i w_i v_i
  seq-mean-token-mean       sum_i w_i (sum_t m_it l_it) / n_i  sum_i w_i v_i
  seq-mean-token-sum-norm   sum_i w_i (sum_t m_it l_it) / Tmax sum_i w_i v_i
    (Dr. GRPO: a constant Tmax = `max_tokens` replaces the row length)

  loss = numerator / max(Z, tiny),  tiny = float32 smallest normal.

Conventions:

* The weights are in Z as well as in the numerator, so the loss is a
  weighted *average*: scaling all weights by a constant changes nothing. To
  use unnormalised weights, pass `normalizer=global_normalizer(mask, mode)`
  (computed without weights) together with `sample_weights`.
* Micro-batch / device invariance. The numerator is a sum over rows, so if
  every part of a batch is aggregated with the normaliser Z of the *whole*
  batch (`global_normalizer`, with `axis_name` across devices or summed by
  hand across micro-batches), the parts' losses (and gradients) sum to the
  full-batch loss. Computing Z per part instead is the bug PEERS.md warns
  about. With `normalizer=None` Z comes from the array passed in, which is
  right only when that array is the whole batch.
* An all-masked batch has numerator 0 and Z = 0; the `max(Z, tiny)` guard
  makes its loss exactly 0, not NaN. Padded entries (mask 0) are selected
  away with `where`, so NaN / inf in padding never reach the loss.
* All computation is in float32 (inputs are cast).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

MODES = ("token-mean", "token-sum", "seq-mean-token-sum",
         "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

# exp(20) ~ 4.9e8 is finite in float32; larger log-ratios only come from
# stale or broken log-probs, and would overflow `exp` (verl clamps the same).
DEFAULT_MAX_LOG_RATIO = 20.0

_TINY = float(jnp.finfo(jnp.float32).tiny)


# ----------------------------------------------------------------------------
# Input checks (trace time; messages name the argument).


def _check_rank(name: str, x, ranks) -> None:
  ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
  if jnp.ndim(x) not in ranks:
    expected = " or ".join(str(r) for r in ranks)
    raise ValueError(
        f"`{name}` must have rank {expected}, got shape {jnp.shape(x)}.")


def _check_same_shape(name: str, x, ref_name: str, ref) -> None:
  if jnp.shape(x) != jnp.shape(ref):
    raise ValueError(
        f"`{name}` must have the same shape as `{ref_name}` "
        f"{jnp.shape(ref)}, got {jnp.shape(x)}.")


def _check_advantages(advantages, log_probs) -> None:
  _check_rank("advantages", advantages, (1, 2))
  shape, ref = jnp.shape(advantages), jnp.shape(log_probs)
  if shape not in (ref[:1], ref):
    raise ValueError(
        f"`advantages` must have shape [N] = {ref[:1]} or [N, T] = {ref} to "
        f"match `log_probs`, got {shape}.")


def _check_sample_weights(sample_weights, rows_like) -> None:
  if sample_weights is None:
    return
  _check_rank("sample_weights", sample_weights, 1)
  num_rows = jnp.shape(rows_like)[0]
  if jnp.shape(sample_weights)[0] != num_rows:
    raise ValueError(
        f"`sample_weights` must have shape [N] = ({num_rows},), got "
        f"{jnp.shape(sample_weights)}.")


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown aggregation mode {mode!r}; expected one of "
                     f"{MODES}.")


def _is_python_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_clip_args(eps_low, eps_high, dual_clip) -> None:
  for name, value in (("eps_low", eps_low), ("eps_high", eps_high)):
    if _is_python_number(value) and value < 0:
      raise ValueError(f"`{name}` must be >= 0, got {value}.")
  if _is_python_number(eps_low) and eps_low >= 1:
    raise ValueError(
        f"`eps_low` must be < 1 (the lower clip 1 - eps_low must stay "
        f"positive), got {eps_low}.")
  if dual_clip is not None and _is_python_number(dual_clip) and dual_clip <= 1:
    raise ValueError(f"`dual_clip` must be > 1 (or None), got {dual_clip}.")


def _broadcast_advantages(advantages, log_probs) -> Array:
  advantages = jnp.asarray(advantages, jnp.float32)
  return advantages[:, None] if advantages.ndim == 1 else advantages


# ----------------------------------------------------------------------------
# Per-token terms.


def _surrogate_terms(log_probs, old_log_probs, advantages, eps_low, eps_high,
                     dual_clip, max_log_ratio):
  """Returns (loss, clipped, dual_clipped, ratio), all [N, T]."""
  _check_rank("log_probs", log_probs, 2)
  _check_same_shape("old_log_probs", old_log_probs, "log_probs", log_probs)
  _check_advantages(advantages, log_probs)
  _check_clip_args(eps_low, eps_high, dual_clip)
  log_probs = jnp.asarray(log_probs, jnp.float32)
  old_log_probs = jnp.asarray(old_log_probs, jnp.float32)
  adv = _broadcast_advantages(advantages, log_probs)
  log_ratio = jnp.clip(log_probs - old_log_probs, -max_log_ratio,
                       max_log_ratio)
  ratio = jnp.exp(log_ratio)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = jnp.maximum(unclipped, clipped)
  # Clipping binds exactly where the clipped (pessimistic) term is chosen.
  is_clipped = clipped > unclipped
  if dual_clip is None:
    is_dual_clipped = jnp.zeros_like(is_clipped)
  else:
    # For A < 0 the surrogate -rho*A grows without bound in rho; dual clip
    # caps it at -c*A (Ye et al. 2020, verl `clip_ratio_c`).
    cap = -adv * dual_clip
    is_dual_clipped = (adv < 0) & (loss > cap)
    loss = jnp.where(is_dual_clipped, cap, loss)
  return loss, is_clipped, is_dual_clipped, ratio


def clipped_surrogate(log_probs, old_log_probs, advantages, *,
                      eps_low: float = 0.2, eps_high: float = 0.2,
                      dual_clip: float | None = None,
                      max_log_ratio: float = DEFAULT_MAX_LOG_RATIO) -> Array:
  """Per-token PPO clipped surrogate loss (to minimise).

    rho  = exp(clip(log_probs - old_log_probs, -max_log_ratio, max_log_ratio))
    loss = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
    with dual_clip = c > 1, where A < 0:  loss = min(loss, -c * A)

  Asymmetric clipping (`eps_high > eps_low`, DAPO "clip higher") is allowed.
  The dual clip bounds the loss of a negative-advantage token whose ratio
  exploded; its gradient is then 0.

  Args:
    log_probs: [N, T] log pi(a_t | s_t) under the current policy.
    old_log_probs: [N, T] the same under the behaviour policy.
    advantages: [N] per rollout (broadcast over tokens) or [N, T].
    eps_low: lower clip, 0 <= eps_low < 1.
    eps_high: upper clip, >= 0.
    dual_clip: None (off) or c > 1.
    max_log_ratio: the log-ratio is clamped to +-this before `exp` so that
      broken log-probs give a large finite loss, not inf.

  Returns:
    [N, T] float32 per-token loss (unmasked; aggregate with `aggregate_loss`).

  Raises:
    ValueError: on shape mismatch or invalid clip parameters (trace time).
  """
  return _surrogate_terms(log_probs, old_log_probs, advantages, eps_low,
                          eps_high, dual_clip, max_log_ratio)[0]


def clip_fraction(log_probs, old_log_probs, advantages, token_mask, *,
                  eps_low: float = 0.2, eps_high: float = 0.2,
                  axis_name: Any = None) -> Array:
  """Fraction of valid tokens where the PPO clip binds (a diagnostic).

    clip_fraction = sum_it m_it [clipped_it > unclipped_it]
                    / max(sum_it m_it, 1)

  i.e. the tokens where `clipped_surrogate` chose the clipped term (verl's
  `pg_clipfrac`). Unweighted by sample weights. With `axis_name` both sums
  are `psum`med, giving the global fraction on every device.

  Args:
    log_probs, old_log_probs: [N, T].
    advantages: [N] or [N, T].
    token_mask: [N, T], nonzero = valid.
    eps_low, eps_high: as in `clipped_surrogate`.
    axis_name: optional mapped axis name(s) to reduce over.

  Returns:
    scalar float32 in [0, 1]; 0 for an all-masked batch.
  """
  _check_same_shape("token_mask", token_mask, "log_probs", log_probs)
  _, is_clipped, _, _ = _surrogate_terms(
      log_probs, old_log_probs, advantages, eps_low, eps_high, None,
      DEFAULT_MAX_LOG_RATIO)
  return _masked_mean(is_clipped.astype(jnp.float32),
                      jnp.asarray(token_mask) != 0, axis_name)


def _check_kl_inputs(log_probs, ref_log_probs):
  _check_same_shape("ref_log_probs", ref_log_probs, "log_probs", log_probs)
  return (jnp.asarray(log_probs, jnp.float32),
          jnp.asarray(ref_log_probs, jnp.float32))


def kl_k1(log_probs, ref_log_probs) -> Array:
  """k1 estimator of KL(pi || pi_ref) per token: `log_probs - ref_log_probs`.

  Unbiased under samples from pi but high-variance and can be negative per
  token. Shapes: any, both equal; returns the same shape, float32.
  """
  log_probs, ref_log_probs = _check_kl_inputs(log_probs, ref_log_probs)
  return log_probs - ref_log_probs


def kl_k2(log_probs, ref_log_probs) -> Array:
  """k2 estimator per token: `0.5 * (log_probs - ref_log_probs) ** 2`.

  Biased, low variance, >= 0; its gradient is that of the true reverse KL
  at on-policy samples. Shapes: any, both equal; float32.
  """
  log_probs, ref_log_probs = _check_kl_inputs(log_probs, ref_log_probs)
  return 0.5 * jnp.square(log_probs - ref_log_probs)


def kl_k3(log_probs, ref_log_probs, *,
          max_log_ratio: float = DEFAULT_MAX_LOG_RATIO) -> Array:
  """k3 estimator per token (Schulman): `exp(d) - d - 1`, d = ref - logp.

  Unbiased for KL(pi || pi_ref) under samples from pi, low variance and
  >= 0 per token (verl `low_var_kl`). `d` is clamped to +-max_log_ratio
  before `exp` so the value stays finite. Shapes: any, both equal; float32.
  """
  log_probs, ref_log_probs = _check_kl_inputs(log_probs, ref_log_probs)
  log_ratio = jnp.clip(ref_log_probs - log_probs, -max_log_ratio,
                       max_log_ratio)
  return jnp.exp(log_ratio) - log_ratio - 1.0


def kl_divergence(log_probs, ref_log_probs, estimator: str = "k3") -> Array:
  """Per-token KL(pi || pi_ref) with the named estimator ("k1", "k2", "k3").

  Raises:
    ValueError: for an unknown `estimator`, naming it.
  """
  if estimator == "k1":
    return kl_k1(log_probs, ref_log_probs)
  if estimator == "k2":
    return kl_k2(log_probs, ref_log_probs)
  if estimator == "k3":
    return kl_k3(log_probs, ref_log_probs)
  raise ValueError(f"Unknown KL estimator {estimator!r}; expected one of "
                   f"{KL_ESTIMATORS}.")


def entropy_from_logits(logits) -> Array:
  """Entropy of softmax(logits) over the last axis.

    H = -sum_v p_v log p_v,   p = softmax(logits)

  Logits of -inf (a masked vocabulary entry) contribute 0 (0 log 0 := 0),
  with a finite gradient. A row that is all -inf has no distribution and
  gives NaN.

  Args:
    logits: [..., V].

  Returns:
    [...] float32, in [0, log V].
  """
  if jnp.ndim(logits) < 1:
    raise ValueError(
        f"`logits` must have rank >= 1 ([..., V]), got {jnp.shape(logits)}.")
  logits = jnp.asarray(logits, jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  # Replace -inf before multiplying: 0 * -inf is NaN in value and gradient.
  log_p = jnp.where(jnp.isneginf(log_p), 0.0, log_p)
  return -jnp.sum(jax.nn.softmax(logits, axis=-1) * log_p, axis=-1)


# ----------------------------------------------------------------------------
# Aggregation.


def _masked_mean(values, valid, axis_name) -> Array:
  """Token mean over valid entries, global with `axis_name`; 0 if empty."""
  total = jnp.sum(jnp.where(valid, values, 0.0))
  count = jnp.sum(valid.astype(jnp.float32))
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1.0)


def _prepare(per_token, token_mask, sample_weights):
  _check_rank("per_token", per_token, 2)
  _check_same_shape("token_mask", token_mask, "per_token", per_token)
  _check_sample_weights(sample_weights, per_token)
  valid = jnp.asarray(token_mask) != 0
  if sample_weights is None:
    weights = jnp.ones(jnp.shape(per_token)[:1], jnp.float32)
  else:
    weights = jnp.asarray(sample_weights, jnp.float32)
  return valid, weights


def _local_normalizer(valid, weights, mode) -> Array:
  tokens_per_row = jnp.sum(valid.astype(jnp.float32), axis=-1)
  if mode == "token-mean":
    return jnp.sum(weights * tokens_per_row)
  if mode == "token-sum":
    return jnp.float32(1.0)
  # seq-mean-*: count (weighted) rows holding at least one valid token, so
  # padding rows added to fill a batch do not dilute the mean.
  return jnp.sum(jnp.where(tokens_per_row > 0, weights, 0.0))


def global_normalizer(token_mask, mode: str, sample_weights=None, *,
                      axis_name: Any = None) -> Array:
  """The normaliser Z of `aggregate_loss` for this batch (see module doc).

    token-mean:   Z = sum_i w_i n_i    (weighted number of valid tokens)
    token-sum:    Z = 1
    seq-mean-*:   Z = sum_i w_i v_i    (weighted number of non-empty rows)

  With `axis_name` (inside `pmap` / `shard_map`) Z is `psum`med over the
  mapped axis, so each device can aggregate its shard with the global Z and
  the shards' losses sum to the full-batch loss. For micro-batches on one
  device, call it on the full mask (or sum it over micro-batches) and pass
  it as `normalizer` to each micro-batch. Pass `sample_weights` here iff
  the weights should be normalised away (the default behaviour of
  `aggregate_loss`).

  Args:
    token_mask: [N, T], nonzero = valid token.
    mode: one of `MODES`.
    sample_weights: optional [N] per-row weights.
    axis_name: optional mapped axis name(s) to `psum` over.

  Returns:
    scalar float32 >= 0 (0 for an all-masked batch; the aggregation guards
    the division).

  Raises:
    ValueError: unknown `mode`, or shapes that do not match.
  """
  _check_mode(mode)
  _check_rank("token_mask", token_mask, 2)
  _check_sample_weights(sample_weights, token_mask)
  valid = jnp.asarray(token_mask) != 0
  weights = (jnp.ones(valid.shape[:1], jnp.float32) if sample_weights is None
             else jnp.asarray(sample_weights, jnp.float32))
  z = _local_normalizer(valid, weights, mode)
  if axis_name is not None and mode != "token-sum":
    z = jax.lax.psum(z, axis_name)
  return z


def aggregate_loss(per_token, token_mask, mode: str = "token-mean", *,
                   sample_weights=None, normalizer=None,
                   max_tokens: int | None = None) -> Array:
  """Reduces a per-token loss [N, T] to a scalar (see module docstring).

    loss = numerator(mode) / max(Z, tiny)

  Args:
    per_token: [N, T] per-token loss; entries where the mask is 0 are
      ignored (even NaN / inf).
    token_mask: [N, T], nonzero = valid (treated as boolean, not a weight).
    mode: one of `MODES`.
    sample_weights: optional [N] weights w_i multiplying each row's
      contribution (ReCal's omega); also in Z unless `normalizer` is given.
    normalizer: optional scalar Z, typically `global_normalizer(...)` of the
      whole (global) batch. None: Z of this batch, weights included.
    max_tokens: Tmax of `seq-mean-token-sum-norm` (the generation budget);
      default T = per_token.shape[1]. Pass it explicitly when micro-batches
      are padded to different T. Ignored by the other modes.

  Returns:
    scalar float32; exactly 0 for an all-masked batch.

  Raises:
    ValueError: unknown `mode` (named), shape mismatches, non-scalar
      `normalizer`, non-positive `max_tokens` (trace time).
  """
  _check_mode(mode)
  valid, weights = _prepare(per_token, token_mask, sample_weights)
  per_token = jnp.asarray(per_token, jnp.float32)
  if max_tokens is None:
    max_tokens = per_token.shape[1]
  elif _is_python_number(max_tokens) and max_tokens <= 0:
    raise ValueError(f"`max_tokens` must be positive, got {max_tokens}.")
  values = jnp.where(valid, per_token, 0.0)
  row_sums = jnp.sum(values, axis=-1)
  if mode == "seq-mean-token-mean":
    tokens_per_row = jnp.sum(valid.astype(jnp.float32), axis=-1)
    # Empty rows have row_sum 0; max(., 1) only avoids 0 / 0.
    row_values = row_sums / jnp.maximum(tokens_per_row, 1.0)
  elif mode == "seq-mean-token-sum-norm":
    row_values = row_sums / jnp.float32(max_tokens)
  else:
    row_values = row_sums
  numerator = jnp.sum(weights * row_values)
  if normalizer is None:
    normalizer = _local_normalizer(valid, weights, mode)
  else:
    _check_rank("normalizer", normalizer, 0)
    if _is_python_number(normalizer) and normalizer < 0:
      raise ValueError(f"`normalizer` must be >= 0, got {normalizer}.")
    normalizer = jnp.asarray(normalizer, jnp.float32)
  return numerator / jnp.maximum(normalizer, _TINY)


# ----------------------------------------------------------------------------
# Combined loss.


def policy_loss(log_probs, old_log_probs, advantages, token_mask, *,
                ref_log_probs=None, sample_weights=None,
                eps_low: float = 0.2, eps_high: float = 0.2,
                dual_clip: float | None = None,
                kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy=None, entropy_coef: float = 0.0,
                mode: str = "token-mean", normalizer=None,
                max_tokens: int | None = None,
                max_log_ratio: float = DEFAULT_MAX_LOG_RATIO,
                axis_name: Any = None) -> tuple[Array, dict[str, Array]]:
  """Clipped policy-gradient loss with KL penalty and entropy bonus.

    L = agg(pg) + kl_coef * agg(kl) - entropy_coef * agg(H)
      = agg(pg + kl_coef * kl - entropy_coef * H)

  with `pg = clipped_surrogate(...)`, `kl = kl_divergence(log_probs,
  ref_log_probs, kl_estimator)`, `H = entropy` and `agg = aggregate_loss`
  with the same mask, mode, sample weights and normaliser for all three
  terms (so the objective is one weighted average of per-token terms).

  Padding: log-probs, advantages and entropy are replaced by 0 where the
  mask is 0 *before* any arithmetic, so NaN / inf padding gives neither a
  NaN loss nor a NaN gradient.

  Sharding: inside `pmap` / `shard_map` pass `axis_name`. Then Z defaults
  to `global_normalizer(..., axis_name=axis_name)`, the returned loss is this
  shard's additive contribution (the sum over shards is the global loss;
  `psum` the gradients), and the diagnostic metrics are global means.

  Args:
    log_probs: [N, T] current-policy log-probs of the taken tokens.
    old_log_probs: [N, T] behaviour-policy log-probs.
    advantages: [N] or [N, T].
    token_mask: [N, T], nonzero = valid.
    ref_log_probs: optional [N, T] reference-policy log-probs; required when
      `kl_coef` is a nonzero Python number.
    sample_weights: optional [N] per-rollout weights (ReCal omega).
    eps_low, eps_high, dual_clip, max_log_ratio: see `clipped_surrogate`.
    kl_coef: KL penalty coefficient beta.
    kl_estimator: "k1", "k2" or "k3".
    entropy: optional [N, T] per-token entropy (e.g. `entropy_from_logits`),
      differentiable; required when `entropy_coef` is a nonzero number.
    entropy_coef: entropy bonus coefficient.
    mode: aggregation mode, one of `MODES`.
    normalizer: optional global Z (see `global_normalizer`).
    max_tokens: see `aggregate_loss`.
    axis_name: optional mapped axis name(s) for sharded use.

  Returns:
    (loss, metrics). `loss` is a float32 scalar. `metrics` always has the
    same keys (absent terms are 0):
      loss, pg_loss, kl_loss, entropy_loss: additive, `loss = pg_loss +
        kl_loss + entropy_loss` (kl_loss = kl_coef * agg(kl), entropy_loss =
        -entropy_coef * agg(H)); per shard when sharded.
      clip_fraction, dual_clip_fraction, approx_kl (k3 of old vs current),
      ratio_mean, ref_kl (mean of the chosen estimator), entropy: unweighted
        means over valid tokens, global with `axis_name`.
      num_tokens: valid tokens (global with `axis_name`); normalizer: Z used.

  Raises:
    ValueError: shape mismatches, unknown `mode` / `kl_estimator`, a
      nonzero coefficient without its input (all at trace time).
  """
  _check_mode(mode)
  if kl_estimator not in KL_ESTIMATORS:
    raise ValueError(f"Unknown KL estimator {kl_estimator!r}; expected one "
                     f"of {KL_ESTIMATORS}.")
  _check_rank("log_probs", log_probs, 2)
  _check_same_shape("old_log_probs", old_log_probs, "log_probs", log_probs)
  _check_same_shape("token_mask", token_mask, "log_probs", log_probs)
  _check_advantages(advantages, log_probs)
  _check_sample_weights(sample_weights, log_probs)
  if ref_log_probs is None:
    if not (_is_python_number(kl_coef) and kl_coef == 0):
      raise ValueError("`kl_coef` is nonzero but `ref_log_probs` is None.")
  else:
    _check_same_shape("ref_log_probs", ref_log_probs, "log_probs", log_probs)
  if entropy is None:
    if not (_is_python_number(entropy_coef) and entropy_coef == 0):
      raise ValueError("`entropy_coef` is nonzero but `entropy` is None.")
  else:
    _check_same_shape("entropy", entropy, "log_probs", log_probs)

  valid = jnp.asarray(token_mask) != 0
  row_valid = jnp.any(valid, axis=-1)

  def clean(x):
    # Inner `where` (the "double where"): keeps padding out of every later
    # op, so its gradient is exactly 0 rather than 0 * NaN.
    return jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)

  log_probs = clean(log_probs)
  old_log_probs = clean(old_log_probs)
  advantages = jnp.asarray(advantages, jnp.float32)
  advantages = jnp.where(row_valid if advantages.ndim == 1 else valid,
                         advantages, 0.0)

  if normalizer is None:
    normalizer = global_normalizer(token_mask, mode, sample_weights,
                                   axis_name=axis_name)

  def agg(per_token):
    return aggregate_loss(per_token, token_mask, mode,
                          sample_weights=sample_weights,
                          normalizer=normalizer, max_tokens=max_tokens)

  pg, is_clipped, is_dual_clipped, ratio = _surrogate_terms(
      log_probs, old_log_probs, advantages, eps_low, eps_high, dual_clip,
      max_log_ratio)
  pg_loss = agg(pg)

  zero = jnp.zeros((), jnp.float32)
  if ref_log_probs is not None:
    kl = kl_divergence(log_probs, clean(ref_log_probs), kl_estimator)
    kl_loss = kl_coef * agg(kl)
    ref_kl = _masked_mean(jax.lax.stop_gradient(kl), valid, axis_name)
  else:
    kl_loss, ref_kl = zero, zero
  if entropy is not None:
    entropy = clean(entropy)
    entropy_loss = -entropy_coef * agg(entropy)
    mean_entropy = _masked_mean(jax.lax.stop_gradient(entropy), valid,
                                axis_name)
  else:
    entropy_loss, mean_entropy = zero, zero

  loss = pg_loss + kl_loss + entropy_loss

  def mean(x):
    return _masked_mean(jax.lax.stop_gradient(x.astype(jnp.float32)), valid,
                        axis_name)

  num_tokens = jnp.sum(valid.astype(jnp.float32))
  if axis_name is not None:
    num_tokens = jax.lax.psum(num_tokens, axis_name)
  metrics = {
      "loss": loss,
      "pg_loss": pg_loss,
      "kl_loss": jnp.asarray(kl_loss, jnp.float32),
      "entropy_loss": jnp.asarray(entropy_loss, jnp.float32),
      "clip_fraction": mean(is_clipped),
      "dual_clip_fraction": mean(is_dual_clipped),
      "approx_kl": mean(kl_k3(log_probs, old_log_probs)),
      "ratio_mean": mean(ratio),
      "ref_kl": ref_kl,
      "entropy": mean_entropy,
      "num_tokens": num_tokens,
      "normalizer": jnp.asarray(normalizer, jnp.float32),
  }
  # Metrics are diagnostics: no gradient flows through them.
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
