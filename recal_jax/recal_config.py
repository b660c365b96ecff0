"""`ReCalConfig`: every switch of the calibrated advantage, and the presets.

Components are named: `components` lists the names of the K columns, and
every other field refers to components by name. The routing presets
(`METHODS`, `method_config`) name them ("format", "correctness", "cost").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from recal_jax.estimators import ESTIMATORS, SINGLETON_RULES, STD_SCALINGS
from recal_jax.hierarchy import Hierarchy, _pairs

REWARDS = ("components", "sum")
DATASET_NORMS = ("none", "batch", "running")
VARIANCE_H = ("std", "bernoulli", "power")


@dataclasses.dataclass(frozen=True)
class ReCalConfig:
  """Every switch of the calibrated advantage (METHOD.md). Hashable: static.

  Components:
    components: names of the K columns of `components [N, K]`, in order.
  Stage 1 (decomposition):
    reward: 'components' (component-wise advantages, combined with
      `component_weights`) or 'sum' (one GRPO/RLOO advantage of
      sum_k w_k r_k with `sum_weights`, after the gate if any).
    hierarchy: a `Hierarchy` over the names, or None (no gating).
    conditional: statistics of component k only among gated-in members.
    component_weights: name -> w_k (components not listed: 1).
    sum_weights: name -> w_k of the 'sum' scalar (None: component_weights).
    estimator, std_scaling, ddof, eps, singleton: as in `grpo_advantages`.
    whiten: whiten the combined advantage over the batch.
  Stage 2 (distribution-aware optimisation):
    variance_component: name of the primary reward whose group spread gives
      the weights omega (None: no variance weights), with `variance_h` in
      ('std', 'bernoulli', 'power'), `variance_power`, clipped to
      [weight_min, weight_max].
    dataset_norm: 'none', 'batch' or 'running' standardisation of the
      advantages per dataset (`running_decay` for the running statistics).
    dataset_norm_components: names of raw components standardised per
      dataset (batch statistics) before stage 1, e.g. ("cost",).
    balance_datasets: scale the weights so that each dataset's total weight
      (after the variance weights) is equal.
  An inconsistent config raises a ValueError naming the field.
  """

  components: tuple[str, ...] = ("reward",)
  reward: str = "components"
  hierarchy: Optional[Hierarchy] = None
  conditional: bool = True
  component_weights: Mapping[str, float] = ()
  sum_weights: Optional[Mapping[str, float]] = None
  estimator: str = "grpo"
  std_scaling: str = "group"
  ddof: int = 0
  eps: float = 1e-6
  singleton: str = "zero"
  whiten: bool = False
  variance_component: Optional[str] = None
  variance_h: str = "bernoulli"
  variance_power: float = 1.0
  weight_min: float = 0.1
  weight_max: float = 3.0
  dataset_norm: str = "batch"
  dataset_norm_components: tuple[str, ...] = ()
  running_decay: float = 0.99
  balance_datasets: bool = False

  def __post_init__(self):
    fix = lambda name, value: object.__setattr__(self, name, value)
    fix("components", tuple(self.components))
    fix("dataset_norm_components", tuple(self.dataset_norm_components))
    fix("component_weights", _pairs(self.component_weights, "ReCalConfig.component_weights"))
    if self.sum_weights is not None:
      fix("sum_weights", _pairs(self.sum_weights, "ReCalConfig.sum_weights"))
    names = self.components
    if not names or len(set(names)) != len(names) or not all(
        isinstance(c, str) and c for c in names):
      raise ValueError(f"ReCalConfig.components must be K >= 1 distinct names, got {names!r}")
    for field, value, allowed in (
        ("reward", self.reward, REWARDS), ("estimator", self.estimator, ESTIMATORS),
        ("std_scaling", self.std_scaling, STD_SCALINGS),
        ("singleton", self.singleton, SINGLETON_RULES),
        ("variance_h", self.variance_h, VARIANCE_H),
        ("dataset_norm", self.dataset_norm, DATASET_NORMS)):
      if value not in allowed:
        raise ValueError(f"ReCalConfig.{field} must be one of {allowed}, got {value!r}")
    named = {"component_weights": [c for c, _ in self.component_weights],
             "sum_weights": [c for c, _ in self.sum_weights or ()],
             "dataset_norm_components": list(self.dataset_norm_components),
             "variance_component": [] if self.variance_component is None
                                   else [self.variance_component]}
    for field, used in named.items():
      unknown = [c for c in used if c not in names]
      if unknown:
        raise ValueError(f"ReCalConfig.{field} names {unknown}, not among the "
                         f"components {names}")
    if self.hierarchy is not None:
      if not isinstance(self.hierarchy, Hierarchy):
        raise ValueError(f"ReCalConfig.hierarchy must be a Hierarchy or None, "
                         f"got {self.hierarchy!r}")
      self.hierarchy.check(names, "ReCalConfig.hierarchy")
    if not 0 <= self.weight_min <= self.weight_max:
      raise ValueError(f"ReCalConfig: need 0 <= weight_min <= weight_max, got "
                       f"{self.weight_min}, {self.weight_max}")
    if not 0.0 <= self.running_decay < 1.0:
      raise ValueError(f"ReCalConfig.running_decay must be in [0, 1), got {self.running_decay}")

  def check_components(self, k: int) -> None:
    if k != len(self.components):
      raise ValueError(f"components has K={k} columns but ReCalConfig.components "
                       f"names {len(self.components)}: {self.components}")

  def weight_vector(self, sum_weights: bool = False) -> tuple[float, ...]:
    """The weights in column order (`sum_weights` for the 'sum' scalar)."""
    pairs = self.sum_weights if sum_weights and self.sum_weights is not None \
        else self.component_weights
    given = dict(pairs)
    return tuple(given.get(c, 1.0) for c in self.components)

  def replace(self, **changes) -> "ReCalConfig":
    return dataclasses.replace(self, **changes)


# ------------------------------------------------------ routing presets
ROUTING_COMPONENTS = ("format", "correctness", "cost")
ROUTING_TREE = Hierarchy(parents={"correctness": "format", "cost": "correctness"},
                         thresholds={"format": 0.5, "correctness": 0.5})

_ROUTING = dict(components=ROUTING_COMPONENTS, component_weights={"cost": 0.5})
_STAGE2_OFF = dict(variance_component=None, dataset_norm="none")
_RECAL = dict(_ROUTING, hierarchy=ROUTING_TREE, variance_component="correctness",
              dataset_norm_components=("cost",))

METHODS: dict[str, ReCalConfig] = {
    # ReCal, every stage on.
    "recal": ReCalConfig(**_RECAL),
    # Ablations: one stage off at a time.
    "recal_no_hierarchy": ReCalConfig(**dict(_RECAL, hierarchy=None)),
    "recal_no_variance_weights": ReCalConfig(**dict(_RECAL, variance_component=None)),
    "recal_no_dataset_norm": ReCalConfig(**dict(_RECAL, dataset_norm="none",
                                                dataset_norm_components=())),
    # Baselines through the same code.
    "grpo": ReCalConfig(reward="sum", **_ROUTING, **_STAGE2_OFF),
    "dr_grpo": ReCalConfig(reward="sum", std_scaling="none", **_ROUTING, **_STAGE2_OFF),
    "rloo": ReCalConfig(reward="sum", estimator="rloo", **_ROUTING, **_STAGE2_OFF),
    # Router-R1: -1 on a format failure, else correctness + 0.5 cost when
    # correct: the gated sum with fail value -1 for correctness.
    "router_r1": ReCalConfig(
        reward="sum", hierarchy=Hierarchy(ROUTING_TREE.parents, ROUTING_TREE.thresholds,
                                          {"correctness": -1.0}),
        sum_weights={"format": 0.0, "correctness": 1.0, "cost": 0.5},
        **_ROUTING, **_STAGE2_OFF),
    "gdpo": ReCalConfig(whiten=True, **_ROUTING, **_STAGE2_OFF),
}


def method_config(name: str, **overrides: Any) -> ReCalConfig:
  """The `ReCalConfig` of a named preset (`METHODS`), with field overrides."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
  return METHODS[name].replace(**overrides) if overrides else METHODS[name]
