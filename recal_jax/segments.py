"""Segment statistics over flat, ragged batches: the one reduction everything uses.

A batch of N rows is cut into segments (groups of rollouts of one query, or
datasets) by an integer id per row. Segments may have any size, rows may come
in any order, and a validity weight `mask [N]` (or `[N, K]`) removes padding.
Statistics are optionally summed across devices with
`jax.lax.psum(..., axis_name)`, so a batch sharded under `shard_map` / `pmap`
gives the statistics of the global batch.

For values `x [N, K]` (or `[N]`), ids `s [N]` and mask `m`:

  count[g] = sum_{i: s_i = g} m_i
  mean[g]  = sum m_i x_i / max(count[g], 1)
  var[g]   = sum m_i (x_i - mean[g])^2 / (count[g] - ddof)   if count[g] > ddof
           = 0                                                otherwise
  std[g]   = sqrt(var[g])

The variance is computed around the mean (two passes, or Chan et al.'s exact
merge of per-piece centred moments, never `E[x^2] - E[x]^2`), which stays
exact for rewards with a large offset, e.g. costs near 1e3. Rows whose id is
outside [0, num_segments) are dropped by `segment_sum`; the public functions
check ids before they get here.

How rows map to segments is a `Segmentation`; the maths above is written once
against it (`Segmentation.moments`, `.sums`, `.take`):

* `ScatterSegments`: any layout. `jax.ops.segment_sum` (an XLA scatter-add)
  to reduce, a gather to read per-segment values back per row. Columns are
  stacked so that one scatter reduces several of them.
* `ContiguousSegments`: rows `[N] = [L * size]`, row `i` in segment
  `first + i // size` (the `repeat(arange(B), G)` layout of GRPO batches).
  A reduction is a loop over L adding the `size` strided slices of the
  `[L, size]` view (pairwise), reading back is a broadcast: no scatter, no
  gather. Only correct for that layout: callers check it
  (`advantage.recal_advantages` does, at run time, and falls back).
* `NestedSegments`: coarse segments (datasets) made of whole contiguous fine
  segments (groups): rows are reduced to the fine segments, then the `L`
  fine results are scattered into the coarse ones and merged exactly.
* `WholeBatch`: one segment, the whole (global) batch (rows of any shape).

Performance notes (XLA on CPU, measured in experiments/benchmarks/RESULTS.md):
a scatter-add of N rows costs about as much as 5-10 elementwise passes, a
reduce over a short minor axis (`[L, 8].sum(1)`, `[N, 3].sum(-1)`) several
times a strided-slice add, and stacking 3 columns for a scatter is slower
than stacking 4.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# Stacked scatter operands stay below this many bytes: larger host buffers are
# mmap-ed (glibc's threshold is at most 32 MiB) and page-faulted on every call.
_MAX_STACK_BYTES = 1 << 24


class SegmentStats(NamedTuple):
  """Per-segment statistics; leading dim is `num_segments`."""

  mean: Array  # [S] or [S, K] float32
  std: Array  # [S] or [S, K] float32
  count: Array  # [S] or [S, K] float32 (sum of mask weights)


class Moments(NamedTuple):
  """Masked moments of one column per segment: enough for mean and std."""

  count: Array  # [S] sum of mask weights
  total: Array  # [S] sum m x
  m2: Array  # [S] sum m (x - mean)^2, mean = total / max(count, 1)

  @property
  def mean(self) -> Array:
    return self.total / jnp.maximum(self.count, 1.0)

  def var(self, ddof: int = 0) -> Array:
    dof = self.count - ddof
    return jnp.where(dof > 0, self.m2 / jnp.where(dof > 0, dof, 1.0), 0.0)

  def stats(self, ddof: int = 0) -> SegmentStats:
    return SegmentStats(mean=self.mean, std=jnp.sqrt(self.var(ddof)),
                        count=self.count)


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


def multi_sum(arrays: Sequence[Array], axes: Sequence[int]) -> list[Array]:
  """Sums of several same-shape arrays over `axes` in one variadic reduce.

  One loop over the rows for all of them (XLA CPU runs one loop per output
  of a separate reduce); arrays that are the same object are summed once.
  """
  if not arrays:
    return []
  unique: list[Array] = []
  index = []
  for a in arrays:
    for u, b in enumerate(unique):
      if a is b:
        index.append(u)
        break
    else:
      index.append(len(unique))
      unique.append(a)
  shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in unique))
  unique = [jnp.broadcast_to(jnp.asarray(a, jnp.float32), shape) for a in unique]
  zeros = tuple(jnp.zeros((), jnp.float32) for _ in unique)
  out = jax.lax.reduce(tuple(unique), zeros,
                       lambda x, y: tuple(a + b for a, b in zip(x, y)),
                       tuple(axes))
  return [out[i] for i in index]


def _block_sum(x: Array) -> Array:
  """`[L, G]` -> `[L]` sums along G by pairwise strided-slice adds.

  An elementwise loop over L (XLA CPU vectorises it; a reduce over a short
  minor axis is many times slower), pairwise for accuracy.
  """
  while x.shape[1] > 1:
    half = x.shape[1] // 2
    y = x[:, :half] + x[:, half:2 * half]
    if x.shape[1] % 2:
      y = jnp.concatenate([y[:, :1] + x[:, 2 * half:], y[:, 1:]], axis=1)
    x = y
  return x[:, 0]


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _safe(values: Array, mask: Array) -> Array:
  # Padding rows may hold anything (even NaN): zero them, since 0 * NaN = NaN.
  return jnp.where(mask > 0, values, 0.0)


def _merge(local: Sequence[Moments], reduce, take) -> list[Moments]:
  """Exact merge of per-piece moments into segments (Chan et al.).

  `reduce(list of [P]) -> list of [S]` sums pieces into segments, `take([S])
  -> [P]` reads a segment value back per piece. With m = sum m_i x_i / c over
  a piece and mu the segment mean,
    sum m_i (x_i - mu)^2 = m2 + 2 (m - mu)(total - c m) + c (m - mu)^2,
  where the middle term is 0 unless 0 < c < 1 (fractional weights).
  """
  sums = reduce([x for mo in local for x in (mo.count, mo.total)])
  counts, totals = sums[0::2], sums[1::2]
  means = [t / jnp.maximum(c, 1.0) for c, t in zip(counts, totals)]
  corrected = []
  for mo, mu in zip(local, means):
    piece_mean = mo.total / jnp.maximum(mo.count, 1.0)
    d = piece_mean - take(mu)
    corrected.append(mo.m2 + 2.0 * d * (mo.total - mo.count * piece_mean)
                     + mo.count * d * d)
  m2s = reduce(corrected)
  return [Moments(c, t, m) for c, t, m in zip(counts, totals, m2s)]


class Segmentation:
  """How rows map to segments (see the module docstring).

  Attributes:
    num_segments: static S.
    axis_name: mapped axis the reductions are summed over, or None.
  """

  num_segments: int
  axis_name: Optional[str] = None

  def sums(self, columns: Sequence[Array]) -> list[Array]:
    """Per-segment sums of each row-wise column -> list of `[S]`."""
    raise NotImplementedError

  def take(self, table: Array) -> Array:
    """`table [S]` read back per row (the segment value of each row)."""
    raise NotImplementedError

  def in_range(self) -> Optional[Array]:
    """Row-wise bool: the row's segment id is in range (None: always)."""
    return None

  def moments(self, values: Sequence[Array],
              masks: Sequence[Array]) -> list[Moments]:
    """Masked `Moments` of each column (values[i] weighted by masks[i])."""
    safe = [_safe(v, m) for v, m in zip(values, masks)]
    sums = self.sums([x for v, m in zip(safe, masks) for x in (m, m * v)])
    counts, totals = sums[0::2], sums[1::2]
    means = [t / jnp.maximum(c, 1.0) for c, t in zip(counts, totals)]
    centred = [m * jnp.square(v - self.take(mu))
               for v, m, mu in zip(safe, masks, means)]
    m2s = self.sums(centred)
    return [Moments(c, t, s) for c, t, s in zip(counts, totals, m2s)]

  def moments_and_totals(self, values: Sequence[Array], masks: Sequence[Array],
                         columns: Sequence[Array]
                         ) -> tuple[list[Moments], list[Array]]:
    """`moments(values, masks)` and whole-batch sums (scalars) of `columns`.

    The batch sums count every row, whatever its segment id; layouts whose
    reduction already visits every row take them in the same loop.
    """
    axes = tuple(range(jnp.ndim(columns[0]))) if columns else ()
    totals = multi_sum(columns, axes)
    totals = [_psum(t, self.axis_name) for t in totals]
    return self.moments(values, masks), totals


class ScatterSegments(Segmentation):
  """Any layout: scatter-add (`segment_sum`) and gather. Rows are `[N]`."""

  def __init__(self, segment_ids: Array, num_segments: int,
               axis_name: Optional[str] = None):
    self.segment_ids = segment_ids
    self.num_segments = num_segments
    self.axis_name = axis_name

  def sums(self, columns):
    if not columns:
      return []
    n = self.segment_ids.shape[0]
    width = max(1, min(4, _MAX_STACK_BYTES // max(4 * n, 1)))
    out = []
    for start in range(0, len(columns), width):
      chunk = list(columns[start:start + width])
      if len(chunk) == 1:
        out.append(segment_sum(chunk[0], self.segment_ids, self.num_segments,
                               self.axis_name))
        continue
      # Scatters of 2 or 4 columns vectorise; 3 does not: pad with zeros.
      padded = chunk + [jnp.zeros_like(chunk[0])] * (
          (2 if len(chunk) == 2 else 4) - len(chunk))
      summed = segment_sum(jnp.stack(padded, axis=-1), self.segment_ids,
                           self.num_segments, self.axis_name)
      out.extend(summed[:, i] for i in range(len(chunk)))
    return out

  def take(self, table):
    return table[self.segment_ids]

  def in_range(self):
    return (self.segment_ids >= 0) & (self.segment_ids < self.num_segments)


class ContiguousSegments(Segmentation):
  """Rows `[N]`, `block_shape = (L, size)`, row i in segment `first + i // size`.

  Without `first` (None) the rows hold every segment (`L == num_segments`,
  segment l is row-block l). With a traced `first`, the local rows hold
  segments [first, first + L) of `num_segments` (a shard of the batch, or a
  batch with fewer groups than `num_segments`); per-segment results are
  placed there, zeros elsewhere, then summed over `axis_name` (moments are
  merged exactly, so a segment may even straddle devices).
  """

  def __init__(self, num_segments: int, block_shape: tuple[int, int],
               first: Optional[Array] = None,
               axis_name: Optional[str] = None):
    self.num_segments = num_segments
    self.block_shape = tuple(block_shape)
    self.num_local, self.size = block_shape
    self.rows_shape = (self.num_local * self.size,)
    self.first = first
    self.axis_name = axis_name
    if first is None and self.num_local != num_segments:
      raise ValueError(f"{self.num_local} row blocks for {num_segments} "
                       "segments: pass `first`")

  def local_sums(self, columns):
    """`[L]` sums of each `[N]` column over its row blocks (strided adds)."""
    return [_block_sum(jnp.broadcast_to(jnp.asarray(c, jnp.float32),
                                        self.rows_shape).reshape(self.block_shape))
            for c in columns]

  def broadcast(self, local: Array) -> Array:
    """`[L]` (one value per local row block) -> rows `[N]`."""
    return jnp.broadcast_to(local[:, None], self.block_shape).reshape(self.rows_shape)

  def _place(self, local: Array) -> Array:
    if self.first is None:
      return local
    zeros = jnp.zeros((self.num_segments,), local.dtype)
    return jax.lax.dynamic_update_slice(zeros, local, (self.first,))

  def _local_table(self, table: Array) -> Array:
    if self.first is None:
      return table
    return jax.lax.dynamic_slice(table, (self.first,), (self.num_local,))

  def sums(self, columns):
    return [_psum(self._place(s), self.axis_name)
            for s in self.local_sums(columns)]

  def take(self, table):
    return self.broadcast(self._local_table(table))

  def local_moments(self, values, masks, columns=()
                    ) -> tuple[list[Moments], list[Array]]:
    """`[L]` moments per local row block (sums, then centred squares), and
    the `[L]` block sums of `columns` alongside the first sums."""
    safe = [_safe(v, m) for v, m in zip(values, masks)]
    sums = self.local_sums(
        [x for v, m in zip(safe, masks) for x in (m, m * v)] + list(columns))
    extra = sums[2 * len(safe):]
    counts, totals = sums[0:2 * len(safe):2], sums[1:2 * len(safe):2]
    means = [t / jnp.maximum(c, 1.0) for c, t in zip(counts, totals)]
    m2s = self.local_sums([m * jnp.square(v - self.broadcast(mu))
                           for v, m, mu in zip(safe, masks, means)])
    return [Moments(c, t, s) for c, t, s in zip(counts, totals, m2s)], extra

  def moments_and_totals(self, values, masks, columns):
    local, extra = self.local_moments(values, masks, columns)
    totals = [_psum(jnp.sum(e), self.axis_name) for e in extra]
    return self._globalize(local), totals

  def moments(self, values, masks):
    return self._globalize(self.local_moments(values, masks)[0])

  def _globalize(self, local: list[Moments]) -> list[Moments]:
    if self.first is None and self.axis_name is None:
      return local
    placed = [Moments(*(self._place(x) for x in mo)) for mo in local]
    if self.axis_name is None:
      return placed
    # Segments may straddle devices: merge the per-device moments exactly.
    return _merge(placed, lambda xs: [_psum(x, self.axis_name) for x in xs],
                  lambda t: t)


class NestedSegments(Segmentation):
  """Coarse segments (datasets) made of whole fine contiguous segments (groups).

  `coarse_ids [L]` is the coarse id of each local fine segment (row block);
  ids outside [0, num_segments) drop the block. Reductions go rows -> fine
  segments (one loop) -> coarse segments (a scatter of L values).
  """

  def __init__(self, fine: ContiguousSegments, coarse_ids: Array,
               num_segments: int, axis_name: Optional[str] = None):
    self.fine = fine
    self.coarse_ids = coarse_ids
    self.num_segments = num_segments
    self.axis_name = axis_name
    self._coarse = ScatterSegments(coarse_ids, num_segments, axis_name)

  def sums(self, columns):
    return self._coarse.sums(self.fine.local_sums(columns))

  def take(self, table):
    return self.fine.broadcast(jnp.take(table, self.coarse_ids, mode="clip"))

  def in_range(self):
    return self.fine.broadcast(self._coarse.in_range())

  def moments(self, values, masks):
    local = self.fine.local_moments(values, masks)[0]
    return _merge(local, self._coarse.sums,
                  lambda t: jnp.take(t, self.coarse_ids, mode="clip"))


class WholeBatch(Segmentation):
  """One segment: the whole (global) batch. Rows of any shape."""

  num_segments = 1

  def __init__(self, rows_shape: tuple[int, ...],
               axis_name: Optional[str] = None):
    self.rows_shape = tuple(rows_shape)
    self.axis_name = axis_name

  def sums(self, columns):
    axes = tuple(range(len(self.rows_shape)))
    sums = multi_sum(columns, axes)
    return [_psum(s, self.axis_name)[None] for s in sums]

  def take(self, table):
    return jnp.broadcast_to(table[0], self.rows_shape)


def _columns(x: Array) -> list[Array]:
  return [x] if x.ndim == 1 else [x[:, k] for k in range(x.shape[1])]


def segment_stats(values: Array, segment_ids: Array, num_segments: int,
                  mask: Array, *, ddof: int = 0,
                  axis_name: Optional[str] = None,
                  segmentation: Optional[Segmentation] = None) -> SegmentStats:
  """Masked mean / std / count of `values [N]` or `[N, K]` per segment.

  Components (the K columns) are reduced together (stacked into one scatter,
  or one loop) rather than through a vmap over K. `mask` is `[N]` (shared by
  every column) or `[N, K]` (a column-specific mask, e.g. a gate). See the
  module docstring for the formulas; a segment with `count <= ddof` gets
  std 0. `segmentation` replaces the default `ScatterSegments(segment_ids,
  num_segments, axis_name)` (its rows must then be `[N]`-shaped too).
  """
  values = jnp.asarray(values, jnp.float32)
  seg = segmentation or ScatterSegments(segment_ids, num_segments, axis_name)
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == values.ndim:
    masks = _columns(m)
  else:
    masks = [m] * (1 if values.ndim == 1 else values.shape[1])
  moments = seg.moments(_columns(values), masks)
  stats = [mo.stats(ddof) for mo in moments]
  if values.ndim == 1:
    return stats[0]
  return SegmentStats(*(jnp.stack(field, axis=-1) for field in zip(*stats)))
