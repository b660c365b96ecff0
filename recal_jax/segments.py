"""Segment statistics over flat, ragged batches: the one reduction everything uses.

A batch of N rows is cut into segments (groups of rollouts of one query, or
datasets) by an integer id per row. Segments may have any size, rows may come
in any order, and a validity weight `mask [N]` (or `[N, K]`) removes padding.
Statistics are computed with `jax.ops.segment_sum`, never a Python loop or a
`[num_segments, G]` reshape, and optionally summed across devices with
`jax.lax.psum(..., axis_name)` so a batch sharded under `shard_map` / `pmap`
gives the statistics of the global batch.

For values `x [N, K]` (or `[N]`), ids `s [N]` and mask `m`:

  count[g] = sum_{i: s_i = g} m_i
  mean[g]  = sum m_i x_i / max(count[g], 1)
  var[g]   = sum m_i (x_i - mean[g])^2 / (count[g] - ddof)   if count[g] > ddof
           = 0                                                otherwise
  std[g]   = sqrt(var[g])

The variance is computed in two passes (mean first, then centred squares),
which stays exact for rewards with a large offset, e.g. costs near 1e3.
Rows whose id is outside [0, num_segments) are dropped by `segment_sum`;
the public functions check ids before they get here.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


class SegmentStats(NamedTuple):
  """Per-segment statistics; leading dim is `num_segments`."""

  mean: Array  # [S] or [S, K] float32
  std: Array  # [S] or [S, K] float32
  count: Array  # [S] or [S, K] float32 (sum of mask weights)


def segment_sum(values: Array, segment_ids: Array, num_segments: int,
                axis_name: Optional[str] = None) -> Array:
  """Sums rows of `values [N, ...]` by `segment_ids [N]` -> `[num_segments, ...]`.

  With `axis_name`, the per-device sums are `psum`-ed, so the result is the
  sum over the global batch (every device gets the same array).
  """
  out = jax.ops.segment_sum(values, segment_ids, num_segments=num_segments)
  if axis_name is not None:
    out = jax.lax.psum(out, axis_name)
  return out


def _broadcast_mask(mask: Array, values: Array) -> Array:
  mask = mask.astype(values.dtype)
  while mask.ndim < values.ndim:
    mask = mask[..., None]
  return jnp.broadcast_to(mask, values.shape)


def segment_stats(values: Array, segment_ids: Array, num_segments: int,
                  mask: Array, *, ddof: int = 0,
                  axis_name: Optional[str] = None) -> SegmentStats:
  """Masked mean / std / count of `values [N]` or `[N, K]` per segment.

  Components (the K columns) are reduced together in one `segment_sum` per
  pass rather than through a vmap over K. `mask` is `[N]` (shared by every
  column) or `[N, K]` (a column-specific mask, e.g. a gate). See the module
  docstring for the formulas; a segment with `count <= ddof` gets std 0.
  """
  m = _broadcast_mask(mask, values)
  # Padding rows may hold anything (even NaN): zero them, since 0 * NaN = NaN.
  values = jnp.where(m > 0, values, 0.0)
  # One segment_sum for count and sum together (fused along the last axis).
  stacked = jnp.stack([m, m * values], axis=-1)
  sums = segment_sum(stacked, segment_ids, num_segments, axis_name)
  count, total = sums[..., 0], sums[..., 1]
  mean = total / jnp.maximum(count, 1.0)
  centred = jnp.where(m > 0, values - mean[segment_ids], 0.0)
  sq = segment_sum(m * centred * centred, segment_ids, num_segments, axis_name)
  dof = count - ddof
  var = jnp.where(dof > 0, sq / jnp.where(dof > 0, dof, 1.0), 0.0)
  return SegmentStats(mean=mean, std=jnp.sqrt(var), count=count)
