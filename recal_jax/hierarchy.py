"""The hierarchical gate over named reward components (METHOD.md, stage 1).

Public as `recal_jax.advantage.Hierarchy` / `hierarchical_gate`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from recal_jax.estimators import _jit, check_rewards, columns

Array = jax.Array


def _pairs(value, field: str, cast=float) -> tuple:
  """A mapping name -> value (or its pairs) as sorted, hashable pairs."""
  if isinstance(value, Mapping):
    value = value.items()
  try:
    pairs = tuple(sorted((str(k), cast(v)) for k, v in value))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{field} must map component names to values, got {value!r}") from e
  return pairs


@dataclasses.dataclass(frozen=True)
class Hierarchy:
  """A priority tree over named reward components (METHOD.md, stage 1).

  Attributes (mappings by component name; stored as sorted pairs, hashable):
    parents: child -> parent. Components not listed are roots.
    thresholds: name -> t, the pass predicate r >= t of a component that
      gates its descendants; a component without one never blocks them.
    fail_values: name -> the reward a component gets where its gate failed
      (unconditional variant and reward='sum'); default 0.

  Routing (`advantage.method_config("recal")`): format -> correctness -> cost,
  thresholds 0.5 on format and correctness.
  """

  parents: Mapping[str, str] = ()
  thresholds: Mapping[str, float] = ()
  fail_values: Mapping[str, float] = ()

  def __post_init__(self):
    object.__setattr__(self, "parents", _pairs(self.parents, "Hierarchy.parents", str))
    object.__setattr__(self, "thresholds", _pairs(self.thresholds, "Hierarchy.thresholds"))
    object.__setattr__(self, "fail_values", _pairs(self.fail_values, "Hierarchy.fail_values"))
    for name, _ in self.parents:
      self.ancestors(name)  # raises on a cycle

  def names(self) -> set[str]:
    return ({c for c, _ in self.parents} | {p for _, p in self.parents}
            | {c for c, _ in self.thresholds} | {c for c, _ in self.fail_values})

  def ancestors(self, name: str) -> tuple[str, ...]:
    """Names of the ancestors of `name`, nearest first."""
    parents = dict(self.parents)
    out, node = [], parents.get(name)
    while node is not None:
      if node in out or node == name:
        raise ValueError(f"Hierarchy.parents has a cycle through {name!r}")
      out.append(node)
      node = parents.get(node)
    return tuple(out)

  def check(self, components: Sequence[str], field: str = "hierarchy") -> None:
    unknown = sorted(self.names() - set(components))
    if unknown:
      raise ValueError(f"{field} names {unknown}, not among the components "
                       f"{tuple(components)}")


def gate_columns(cols: Sequence[Array], hierarchy: Hierarchy,
                 names: Sequence[str]) -> tuple[list[Array], list[Array]]:
  """`hierarchical_gate` on K row-wise columns named `names`."""
  thresholds, fails = dict(hierarchy.thresholds), dict(hierarchy.fail_values)
  index = {name: k for k, name in enumerate(names)}
  passes = {name: (cols[index[name]] >= t).astype(jnp.float32)
            for name, t in thresholds.items()}
  gates, gated = [], []
  for name, c in zip(names, cols):
    gate = jnp.ones(c.shape, jnp.float32)
    for a in hierarchy.ancestors(name):
      if a in passes:
        gate = gate * passes[a]
    gates.append(gate)
    gated.append(jnp.where(gate > 0, c, fails.get(name, 0.0)))
  return gates, gated


@_jit("hierarchy", "names")
def hierarchical_gate(rewards: Array, hierarchy: Hierarchy,
                      names: tuple[str, ...]) -> tuple[Array, Array]:
  """Gates and gated rewards of a priority tree (METHOD.md, stage 1).

    pass[i, j] = r[i, j] >= thresholds[j]          (1 without a threshold)
    gate[i, k] = prod_{j in ancestors(k)} pass[i, j]
    rg[i, k]   = r[i, k] if gate[i, k] else fail_values[k]

  Args:
    rewards: `[N, K]` components, column k named `names[k]`.
    hierarchy: the tree, over (some of) `names`.
    names: static tuple of the K component names.

  Returns:
    `(gate, gated)`, both `[N, K]` float32. Roots have gate 1.
  """
  rewards = check_rewards(rewards, 2)
  if rewards.shape[1] != len(names):
    raise ValueError(f"rewards has K={rewards.shape[1]} columns, names has "
                     f"{len(names)}: {names}")
  hierarchy.check(names)
  gates, gated = gate_columns(columns(rewards), hierarchy, names)
  return jnp.stack(gates, axis=1), jnp.stack(gated, axis=1)
