"""Routing reward components and the scalar baselines built from them.

A routed rollout (query -> arm) is scored on K = 3 components, stored as the
columns of one float32 array `components [..., 3]`:

  column FORMAT = 0       1.0 if the router's output parsed, else 0.0
  column CORRECTNESS = 1  the chosen arm's score in [0, 1]
  column COST = 2         -cost_usd / cost_scale  (<= 0, higher is better,
                          0 means free)

Everything here is a pure, jit-able function of that array, except
`check_finite_rewards` (host side, numpy) which exists so that NaN / inf
rewards fail loudly before they reach a gradient. `checkified_finite` is the
in-graph counterpart for use under `jax.experimental.checkify`.

The hierarchical gate (stage 1 of ReCal, see docs/METHOD.md) uses the pass
predicates `pass_format` and `pass_correctness`; the scalar baselines
(`router_r1_reward`, `summed_reward`) are what ReCal is compared against.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import checkify
import numpy as np

COMPONENTS = ("format", "correctness", "cost")
FORMAT, CORRECTNESS, COST = 0, 1, 2
NUM_COMPONENTS = len(COMPONENTS)

Array = jax.Array


def _check_components(components, name: str = "components"):
  shape = jnp.shape(components)
  if len(shape) < 1 or shape[-1] != NUM_COMPONENTS:
    raise ValueError(
        f"`{name}` must have shape [..., {NUM_COMPONENTS}] (columns "
        f"{COMPONENTS}), got shape {shape}.")


def _is_python_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def routing_components(format_ok, score, cost_usd, *,
                       cost_scale: float = 1.0) -> Array:
  """Stacks the per-rollout outcomes into reward components.

    components[..., FORMAT]      = float(format_ok)
    components[..., CORRECTNESS] = score
    components[..., COST]        = -cost_usd / cost_scale

  The cost column is a reward (higher is better): 0 for a free call and
  negative otherwise. `cost_scale` sets its unit; with USD per call in the
  1e-4..1e-2 range a scale near the largest per-call cost puts the column
  in [-1, 0], which is the range the defaults of `router_r1_reward` assume.

  Args:
    format_ok: [...] bool or float in {0, 1}; whether the output parsed.
      Cast to float32 as is (a float value of 0.7 stays 0.7; the pass
      predicate thresholds it later).
    score: [...] float in [0, 1], correctness of the chosen arm.
    cost_usd: [...] float >= 0, USD spent on the call.
    cost_scale: positive scalar; a Python number is checked at trace time.

  Returns:
    [..., 3] float32 components, columns ordered as `COMPONENTS`.

  Raises:
    ValueError: if the three inputs differ in shape or `cost_scale <= 0`.
  """
  shapes = {"format_ok": jnp.shape(format_ok), "score": jnp.shape(score),
            "cost_usd": jnp.shape(cost_usd)}
  if len(set(shapes.values())) != 1:
    raise ValueError(
        f"`format_ok`, `score` and `cost_usd` must have the same shape, got "
        f"{shapes}.")
  if _is_python_number(cost_scale) and cost_scale <= 0:
    raise ValueError(f"`cost_scale` must be positive, got {cost_scale}.")
  format_col = jnp.asarray(format_ok).astype(jnp.float32)
  correct_col = jnp.asarray(score).astype(jnp.float32)
  cost_col = -jnp.asarray(cost_usd).astype(jnp.float32) / jnp.float32(
      cost_scale)
  return jnp.stack([format_col, correct_col, cost_col], axis=-1)


def pass_format(format_reward, threshold: float = 0.5) -> Array:
  """Format pass predicate: `1.0 if format_reward >= threshold else 0.0`.

  Args:
    format_reward: [...] the FORMAT column (0 / 1).
    threshold: pass threshold; 0.5 splits {0, 1} cleanly.

  Returns:
    [...] float32 in {0, 1}. NaN compares false, so it fails the gate.
  """
  return (jnp.asarray(format_reward) >= threshold).astype(jnp.float32)


def pass_correctness(correctness_reward, threshold: float = 0.5) -> Array:
  """Correctness pass predicate: `1.0 if score >= threshold else 0.0`.

  Args:
    correctness_reward: [...] the CORRECTNESS column, in [0, 1].
    threshold: inclusive pass threshold (a score equal to it passes).

  Returns:
    [...] float32 in {0, 1}. NaN compares false, so it fails the gate.
  """
  return (jnp.asarray(correctness_reward) >= threshold).astype(jnp.float32)


def router_r1_reward(components, *, cost_weight: float = 0.5,
                     correct_threshold: float = 0.5,
                     format_threshold: float = 0.5,
                     format_fail_value: float = -1.0) -> Array:
  """Router-R1-style scalar reward, the hierarchical-by-hand baseline.

    r = format_fail_value                               if format failed
    r = correctness + cost_weight * cost * [correctness >= correct_threshold]
                                                        otherwise

  A format failure overrides everything else (its correctness and cost are
  ignored), and cost only counts for correct answers so that a cheap wrong
  answer is never preferred to an expensive wrong one for its price.

  Defaults: `cost_weight = 0.5` with the cost column in [-1, 0] (see
  `routing_components`) and binary correctness keeps the order
  format failure (-1) < wrong (0) < any correct answer (>= 0.5). Keep
  `cost_weight <= correct_threshold` to preserve "correct >= 0" for graded
  scores too.

  Args:
    components: [..., 3] as built by `routing_components`.
    cost_weight: weight of the cost column for correct rollouts.
    correct_threshold: inclusive correctness threshold for counting cost.
    format_threshold: inclusive threshold on the format column.
    format_fail_value: reward of a rollout whose format failed.

  Returns:
    [...] float32 scalar reward per rollout.

  Raises:
    ValueError: if the last axis of `components` is not 3.
  """
  _check_components(components)
  components = jnp.asarray(components, jnp.float32)
  correctness = components[..., CORRECTNESS]
  cost = components[..., COST]
  formatted = pass_format(components[..., FORMAT], format_threshold)
  correct = pass_correctness(correctness, correct_threshold)
  reward = correctness + cost_weight * cost * correct
  # `where`, not a blend: a NaN correctness behind a failed format must not
  # leak into the reward (the format verdict overrides all).
  return jnp.where(formatted > 0, reward, jnp.float32(format_fail_value))


def summed_reward(components, weights: Sequence[float] | Array | None = None
                  ) -> Array:
  """Weighted sum of components, the reward of plain GRPO-on-the-sum.

    r = sum_k weights[k] * components[..., k]

  No gating: a format failure only loses its format term. This is what
  ReCal reduces to with stage 1 switched off.

  Args:
    components: [..., K] components (K = 3 for routing).
    weights: [K] weights, default all ones.

  Returns:
    [...] float32.

  Raises:
    ValueError: if `weights` is not a vector of length K.
  """
  components = jnp.asarray(components, jnp.float32)
  if components.ndim < 1:
    raise ValueError(
        f"`components` must have rank >= 1, got shape {components.shape}.")
  num_components = components.shape[-1]
  if weights is None:
    return jnp.sum(components, axis=-1)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (num_components,):
    raise ValueError(
        f"`weights` must have shape ({num_components},) to match the last "
        f"axis of `components` {components.shape}, got {weights.shape}.")
  return jnp.sum(components * weights, axis=-1)


def check_finite_rewards(rewards, name: str = "rewards",
                         component_names: Sequence[str] | None = COMPONENTS
                         ) -> np.ndarray:
  """Host-side check that every reward is finite; returns them as numpy.

  Call it on rewards as they come back from the scorer, before they enter a
  jitted update: a NaN reward otherwise becomes a silent NaN gradient.

  Args:
    rewards: array-like of any shape (typically [N] or [N, K]); a concrete
      value, not a tracer (use `checkified_finite` inside `jit`).
    name: what to call the array in the error message.
    component_names: names for the last axis of a rank >= 2 input; used in
      the message when its length matches that axis, ignored otherwise.

  Returns:
    `rewards` as an np.ndarray (unchanged values).

  Raises:
    ValueError: naming the first (row-major) non-finite entry, its value,
      its component name where known, and how many entries are bad.
    TypeError: if called on a tracer.
  """
  if isinstance(rewards, jax.core.Tracer):
    raise TypeError(
        f"check_finite_rewards(`{name}`) is a host-side check and cannot run "
        "under jit; use checkified_finite inside checkify.checkify.")
  values = np.asarray(rewards)
  if not np.issubdtype(values.dtype, np.number):
    raise TypeError(f"`{name}` must be numeric, got dtype {values.dtype}.")
  bad = ~np.isfinite(values)
  if not bad.any():
    return values
  index = tuple(int(i) for i in np.argwhere(bad)[0])
  where = f"{name}[{', '.join(map(str, index))}]"
  if (values.ndim >= 2 and component_names is not None
      and len(component_names) == values.shape[-1]):
    where += f" (component {component_names[index[-1]]!r})"
  raise ValueError(
      f"{where} is {values[index]}; {int(bad.sum())} of {values.size} "
      f"entries of `{name}` are not finite. Rewards must be finite.")


def checkified_finite(rewards, name: str = "rewards") -> Array:
  """In-graph finiteness check for use under `checkify.checkify`.

  Adds a `checkify.check` that fails when any reward is NaN or inf and
  names the first bad flat index (and its row / column for rank-2 input).
  Returns `rewards` unchanged, so it can be threaded through a computation.

  Usage (the function must be functionalised, jitted or not):

    err, out = jax.jit(checkify.checkify(fn))(rewards)  # fn calls this
    err.throw()

  Calling a jitted function that uses it *without* `checkify.checkify`
  raises a ValueError at trace time (a JAX rule, not ours).

  Args:
    rewards: [...] float rewards.
    name: what to call the array in the error message.

  Returns:
    `rewards`, unchanged.
  """
  rewards = jnp.asarray(rewards)
  if rewards.size == 0:  # Nothing to check; argmax below needs one entry.
    return rewards
  bad = ~jnp.isfinite(rewards)
  flat_index = jnp.argmax(bad.reshape(-1))
  if rewards.ndim == 2:
    num_cols = rewards.shape[1]
    checkify.check(
        ~jnp.any(bad),
        f"`{name}` has a non-finite entry at row {{row}}, column {{col}}.",
        row=flat_index // num_cols, col=flat_index % num_cols)
  else:
    checkify.check(
        ~jnp.any(bad),
        f"`{name}` has a non-finite entry at flat index {{index}}.",
        index=flat_index)
  return rewards
