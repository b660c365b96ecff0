"""Segment statistics over flat batches: the one reduction everything uses.

A batch of N rows is cut into segments (the rollouts of one query, or a
dataset) by an integer id per row; a validity weight `mask [N]` removes
padding. With `axis_name` the sums are `psum`-ed, so a batch sharded under
`shard_map` / `pmap` gives the statistics of the global batch.

For values x, ids s and mask m, each segment g keeps `Moments`, from two
passes over the rows:

  count[g] = sum_{i: s_i = g} m_i                                  (pass 1)
  hi[g], lo[g] = max, min over members (m_i > 0) of x_i            (pass 1)
  shift[g] = hi[g] if hi[g] == lo[g] (no spread), else
             sum m_i x_i / count[g] (the mean, to rounding; 0 if empty)
  total[g] = sum m_i (x_i - shift[g])                               (pass 2)
  m2[g]    = sum m_i (x_i - shift[g])^2 - total[g]^2 / count[g]     (pass 2)
  mean[g]  = shift[g] + total[g] / count[g]
  var[g]   = m2[g] / (count[g] - ddof) if count[g] > ddof else 0

The second pass is the corrected two-pass algorithm (Chan, Golub & LeVeque,
1983): deviations from a first estimate of the mean, the estimate's error
removed by `total`. It keeps full precision for values with a large offset
and a small spread: x - shift is exact when x is near the mean. Taking a
member's own value as the shift of a segment without spread makes "no
spread" exact in float32: every x_i - shift is exactly 0, so total, m2 and
every deviation x_i - mean are exactly 0 (the float32 mean of n copies of v
is not always v).

Sums are accurate at scale: rows are summed in chunks of at most 128 before
the chunk sums are summed the same way (scatter layout, and contiguous
blocks longer than 128); coarse segments (datasets) are sums of their
groups' sums, whole-batch sums blocked by 128 (`pairwise_sum`). At N = 2^20
the statistics agree with float64 to ~1e-7 relative.

How rows map to segments is a `Segmentation` (`group_segmentation`,
`dataset_segmentation` build them from the caller's static `group_size`):

* `ScatterSegments`: any layout. Scatter-add to reduce, gather to read back.
* `BlockSegments`: rows `[L * G]`, row i in segment `first + i // G`: the
  `repeat(arange(B), G)` layout of grouped rollouts. Reductions run along G
  of the `[L, G]` view, reading back is a broadcast.
* `NestedSegments`: coarse segments (datasets) made of whole blocks: rows are
  reduced per block, the L block moments are merged into coarse ones.
* `WholeBatch`: one segment, the whole (global) batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

_CHUNK = 128  # rows summed before chunk sums are added pairwise
_MAX_BUCKETS = 1 << 18  # cap on segments x chunks of a bucketed scatter


class SegmentStats(NamedTuple):
  """Per-segment statistics; leading dim is `num_segments`."""

  mean: Array  # [S] or [S, K] float32
  std: Array  # [S] or [S, K] float32
  count: Array  # [S] or [S, K] float32 (sum of mask weights)


class Moments(NamedTuple):
  """Masked moments of one column per segment (module docstring)."""

  count: Array  # [S] sum of mask weights
  shift: Array  # [S] reference: ~ the mean, a member's value if no spread
  total: Array  # [S] sum m (x - shift)
  m2: Array  # [S] sum m (x - mean)^2

  @property
  def offset(self) -> Array:
    """mean - shift = total / count (0 if empty): exactly 0 without spread."""
    return _ratio(self.total, self.count)

  @property
  def mean(self) -> Array:
    return self.shift + self.offset

  def var(self, ddof: int = 0) -> Array:
    dof = self.count - ddof
    return jnp.where(dof > 0, self.m2 / jnp.where(dof > 0, dof, 1.0), 0.0)

  def stats(self, ddof: int = 0) -> SegmentStats:
    return SegmentStats(self.mean, jnp.sqrt(self.var(ddof)), self.count)


def pairwise_sum(x: Array) -> Array:
  """Sum of all elements of `x` in blocks of 128, then of the block sums
  (and so on): error O(128 log_128 n) ulps at worst, not O(n)."""
  x = jnp.ravel(jnp.asarray(x, jnp.float32))
  if x.shape[0] == 0:
    return jnp.zeros((), jnp.float32)
  return _tree(x[None])[0]


_IDENTITY = {"sum": 0.0, "max": -jnp.inf, "min": jnp.inf}
_COMBINE = {"sum": jnp.add, "max": jnp.maximum, "min": jnp.minimum}


def _reduce_g(xs: Sequence[Array], ops: Sequence[str]) -> list[Array]:
  """`[L, G]` arrays -> `[L]` each, reduced along G by `ops` ('sum', 'max',
  'min') in ONE variadic reduce: the rows are read once for every column,
  and the statistics are not redone per row by fused consumers (as a tree
  of strided slices would be). G > 128 in blocks of 128 first (sums then
  err by O(128 log_128 G) ulps, not O(G))."""
  xs = list(xs)
  if not xs:
    return []

  def reduce(arrays, axis):
    return list(jax.lax.reduce(
        tuple(arrays), tuple(jnp.float32(_IDENTITY[o]) for o in ops),
        lambda a, b: tuple(_COMBINE[o](u, v) for o, u, v in zip(ops, a, b)), (axis,)))

  while xs[0].shape[1] > _CHUNK:
    pad = -xs[0].shape[1] % _CHUNK
    xs = [jnp.pad(x, ((0, 0), (0, pad)), constant_values=_IDENTITY[o])
          .reshape(x.shape[0], -1, _CHUNK) for x, o in zip(xs, ops)]
    xs = reduce(xs, 2)
  return reduce(xs, 1)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmax(x, axis_name):
  return x if axis_name is None else jax.lax.pmax(x, axis_name)


def _ratio(total: Array, count: Array) -> Array:
  """total / count where count > 0, else 0."""
  return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def _two_pass(values, masks, reduce, take) -> list[Moments]:
  """The module docstring's two passes for each column (masks[i] weights
  values[i]). `reduce(columns, ops)` reduces row-wise columns per segment by
  'max' / 'min' / 'sum' (all of a pass in one call); `take(table)` reads a
  per-segment table back per row."""
  members = [(v, m, m > 0) for v, m in zip(values, masks)]
  first = reduce([y for v, m, inside in members
                  for y in (jnp.where(inside, v, -jnp.inf), jnp.where(inside, v, jnp.inf), m,
                            jnp.where(inside, m * v, 0.0))],
                 ["max", "min", "sum", "sum"] * len(members))
  counts = first[2::4]
  shifts = [jnp.where(hi == lo, hi, _ratio(total, count))  # no spread: a member's value
            for hi, lo, count, total in zip(first[0::4], first[1::4], counts, first[3::4])]
  devs = [jnp.where(inside, v - take(shift), 0.0)
          for (v, _, inside), shift in zip(members, shifts)]
  second = reduce([y for (_, m, _), d in zip(members, devs) for y in (m * d, m * jnp.square(d))],
                  ["sum", "sum"] * len(members))
  return [Moments(c, shift, t, jnp.maximum(q - t * _ratio(t, c), 0.0))  # m2 = S2 - T^2 / n
          for c, shift, t, q in zip(counts, shifts, second[0::2], second[1::2])]


def _no_member_zero(shift: Array) -> Array:
  return jnp.where(jnp.isfinite(shift), shift, 0.0)


def merge(pieces: Moments, ids: Array, num_segments: int, sums,
          maxes) -> Moments:
  """Exact merge of per-piece moments (`[P]`) into segments (`[S]`).

  `sums(list of [P]) -> list of [S]` and `maxes([P]) -> [S]` reduce pieces
  into their segment `ids`. With d_p = mean_p - mean (in shifted units):
    total = sum_p total_p + count_p (shift_p - shift)
    m2    = sum_p m2_p + 2 d_p (total_p - count_p offset_p) + count_p d_p^2
  (the middle term is 0 unless 0 < count_p < 1). Pieces without spread that
  share one value merge into a segment without spread, exactly.
  """
  shift = _no_member_zero(maxes(jnp.where(pieces.count > 0, pieces.shift, -jnp.inf)))
  rel = jnp.where(pieces.count > 0, pieces.shift - jnp.take(shift, ids, mode="clip"), 0.0)
  count, total = sums([pieces.count, pieces.total + pieces.count * rel])
  offset = _ratio(total, count)
  d = rel + pieces.offset - jnp.take(offset, ids, mode="clip")
  corrected = (pieces.m2 + 2.0 * d * (pieces.total - pieces.count * pieces.offset)
               + pieces.count * d * d)
  return Moments(count, shift, total, sums([corrected])[0])


class Segmentation:
  """How rows map to segments.

  Subclasses give `sums`, `maxes` and `take`; `moments` is written once here.
  Attributes: `num_segments` (static S), `axis_name` (or None).
  """

  num_segments: int
  axis_name: Optional[str] = None

  def sums(self, columns: Sequence[Array]) -> list[Array]:
    """Per-segment sums of each row-wise column -> list of `[S]`."""
    raise NotImplementedError

  def maxes(self, column: Array) -> Array:
    """Per-segment max of a row-wise column -> `[S]` (-inf if empty)."""
    raise NotImplementedError

  def take(self, table: Array) -> Array:
    """`table [S]` read back per row."""
    raise NotImplementedError

  def in_range(self) -> Optional[Array]:
    """Row-wise bool: the row's segment is in [0, S) (None: always)."""
    return None

  def moments(self, values: Sequence[Array],
              masks: Sequence[Array]) -> list[Moments]:
    """Masked `Moments` of each column (values[i] weighted by masks[i])."""
    return _two_pass(values, masks, self.reduce, self.take)

  def reduce(self, columns: Sequence[Array], ops: Sequence[str]) -> list[Array]:
    """Per-segment 'sum' / 'max' / 'min' of row-wise columns -> list of `[S]`
    (the sums in one `sums` call)."""
    sums = iter(self.sums([c for c, op in zip(columns, ops) if op == "sum"]))
    return [next(sums) if op == "sum" else self.maxes(c) if op == "max"
            else -self.maxes(-c) for c, op in zip(columns, ops)]

  def deviation(self, values: Array, moments: Moments,
                offset: Optional[Array] = None) -> Array:
    """Rows of `(x - shift) - offset` (default offset: mean - shift, so this
    is x - mean; exactly 0 for every member of a segment without spread)."""
    offset = moments.offset if offset is None else offset
    return (values - self.take(moments.shift)) - self.take(offset)


class ScatterSegments(Segmentation):
  """Any layout: scatter-add and gather. Rows are `[N]`.

  A sum goes to `[S, C]` buckets (segment x chunk of rows), then the C chunk
  sums of each segment are summed in blocks of 128: one scatter, accurate for large
  segments (C = 1 when segments are small, S >= N / 128).
  """

  def __init__(self, segment_ids: Array, num_segments: int,
               axis_name: Optional[str] = None):
    self.segment_ids = segment_ids
    self.num_segments = num_segments
    self.axis_name = axis_name
    n = segment_ids.shape[0]
    self.chunks = max(1, min(-(-n // _CHUNK), _MAX_BUCKETS // num_segments))
    rows = max(1, -(-n // self.chunks))
    chunk = jnp.arange(n, dtype=jnp.int32) // rows
    in_range = (segment_ids >= 0) & (segment_ids < num_segments)
    # Out-of-range ids go to an index past the end, which the scatter drops.
    self.buckets = jnp.where(in_range, segment_ids * self.chunks + chunk,
                             num_segments * self.chunks)

  def sums(self, columns):
    if not columns:
      return []
    out = []
    for start in range(0, len(columns), 4):
      chunk = list(columns[start:start + 4])
      # Scatters of 1, 2 or 4 stacked columns vectorise; 3 does not: pad.
      width = 1 if len(chunk) == 1 else 2 if len(chunk) == 2 else 4
      stacked = jnp.stack(chunk + [jnp.zeros_like(chunk[0])] * (width - len(chunk)), -1)
      summed = jax.ops.segment_sum(stacked, self.buckets,
                                   self.num_segments * self.chunks)
      summed = summed.reshape(self.num_segments, self.chunks, width)
      if self.chunks > 1:
        summed = jnp.stack([_tree(summed[:, :, j]) for j in range(width)], -1)
      else:
        summed = summed[:, 0]
      summed = _psum(summed, self.axis_name)
      out.extend(summed[:, j] for j in range(len(chunk)))
    return out

  def maxes(self, column):
    out = jax.ops.segment_max(column, self.segment_ids, self.num_segments)
    return _pmax(out, self.axis_name)

  def take(self, table):
    return jnp.take(table, self.segment_ids, mode="clip")

  def in_range(self):
    return (self.segment_ids >= 0) & (self.segment_ids < self.num_segments)


def _tree(x: Array) -> Array:
  """`[S, C]` -> `[S]`: sums of blocks of up to 128 along C, repeated."""
  while x.shape[1] > 1:
    width = min(_CHUNK, x.shape[1])
    x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % width)))
    x = jnp.sum(x.reshape(x.shape[0], -1, width), axis=2)
  return x[:, 0]


class BlockSegments(Segmentation):
  """Rows `[L * G]`, row i in segment `first + i // G` (`block_shape=(L, G)`).

  `first=None`: the rows hold every segment in order (L == num_segments).
  A traced `first`: the rows hold segments [first, first + L) (one device's
  shard, or fewer groups than `num_segments`); blocks outside [0, S) are
  out of range. Each segment is one block: under `axis_name` a segment id
  must not appear on two devices.
  """

  def __init__(self, num_segments: int, block_shape: tuple[int, int],
               first: Optional[Array] = None,
               axis_name: Optional[str] = None):
    self.num_segments = num_segments
    self.num_local, self.size = block_shape
    self.block_shape = tuple(block_shape)
    self.rows_shape = (self.num_local * self.size,)
    self.axis_name = axis_name
    self.first = first
    if first is None and self.num_local != num_segments:
      raise ValueError(f"{self.num_local} row blocks for {num_segments} "
                       "segments: pass `first`")
    self.ids = None if first is None else first + jnp.arange(self.num_local,
                                                              dtype=jnp.int32)

  def blocks(self, column: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(column, jnp.float32),
                            self.rows_shape).reshape(self.block_shape)

  def broadcast(self, local: Array) -> Array:
    """`[L]` (one value per block) -> rows `[N]`."""
    return jnp.broadcast_to(local[:, None], self.block_shape).reshape(self.rows_shape)

  def block_moments(self, values, masks) -> list[Moments]:
    """`[L]` moments of each block (no cross-device merge): the two passes
    as variadic reductions along G of the `[L, G]` view (`_reduce_g`)."""
    return _two_pass([self.blocks(x) for x in values], [self.blocks(x) for x in masks],
                     _reduce_g, lambda table: table[:, None])

  def local_sums(self, columns):
    return _reduce_g([self.blocks(c) for c in columns], ["sum"] * len(columns))

  def place(self, local: Array, fill: float = 0.0) -> Array:
    if self.ids is None:
      out = local
    else:
      out = jnp.full((self.num_segments,), fill, local.dtype).at[self.ids].set(
          local, mode="drop")
    return out

  def sums(self, columns):
    return [_psum(self.place(s), self.axis_name) for s in self.local_sums(columns)]

  def maxes(self, column):
    local = _reduce_g([self.blocks(column)], ["max"])[0]
    return _pmax(self.place(local, -jnp.inf), self.axis_name)

  def take(self, table):
    if self.ids is None:
      return self.broadcast(table)
    return self.broadcast(jnp.take(table, self.ids, mode="fill", fill_value=0))

  def in_range(self):
    if self.ids is None:
      return None
    return self.broadcast((self.ids >= 0) & (self.ids < self.num_segments))

  def moments(self, values, masks):
    local = self.block_moments(values, masks)
    if self.ids is None and self.axis_name is None:
      return local
    return [Moments(*(_psum(self.place(f), self.axis_name) for f in mo))
            for mo in local]


class NestedSegments(Segmentation):
  """Coarse segments (datasets) made of whole blocks of `fine`.

  `coarse_ids [L]`: the coarse id of each block. Rows are reduced per block,
  then the L block sums / moments go to the coarse segments (bucketed
  scatter, pairwise: coarse sums are sums of block sums).
  """

  def __init__(self, fine: BlockSegments, coarse_ids: Array, num_segments: int,
               axis_name: Optional[str] = None):
    self.fine = fine
    self.coarse_ids = coarse_ids
    self.num_segments = num_segments
    self.axis_name = axis_name
    self._coarse = ScatterSegments(coarse_ids, num_segments, axis_name)

  def sums(self, columns):
    return self._coarse.sums(self.fine.local_sums(columns))

  def maxes(self, column):
    return self._coarse.maxes(_reduce_g([self.fine.blocks(column)], ["max"])[0])

  def take(self, table):
    return self.fine.broadcast(self._coarse.take(table))

  def in_range(self):
    return self.fine.broadcast(self._coarse.in_range())

  def moments(self, values, masks):
    return [merge(mo, self.coarse_ids, self.num_segments, self._coarse.sums,
                  self._coarse.maxes)
            for mo in self.fine.block_moments(values, masks)]


class WholeBatch(Segmentation):
  """One segment: the whole (global) batch. Rows of any shape."""

  num_segments = 1

  def __init__(self, rows_shape: tuple[int, ...],
               axis_name: Optional[str] = None):
    self.rows_shape = tuple(rows_shape)
    self.axis_name = axis_name

  def sums(self, columns):
    return [_psum(pairwise_sum(c), self.axis_name)[None] for c in columns]

  def maxes(self, column):
    return _pmax(jnp.max(column), self.axis_name)[None]

  def take(self, table):
    return jnp.broadcast_to(table[0], self.rows_shape)


def group_segmentation(group_ids: Array, num_groups: int,
                       group_size: Optional[int],
                       axis_name: Optional[str] = None) -> Segmentation:
  """The groups of a batch, for the caller's static layout.

  `group_size=None`: any layout (scatter). An int G: the rows are blocks of
  G contiguous rows, block l being group `group_ids[0] + l` (only row 0 of
  `group_ids` is read; when the rows hold all `num_groups` groups and there
  is no `axis_name` it must be 0 and is not read). Under `shard_map`,
  `group_ids[0]` is the local shard's first group.
  """
  n = group_ids.shape[0]
  if group_size is None:
    return ScatterSegments(group_ids, num_groups, axis_name)
  size = _check_group_size(group_size, n)
  num_local = n // size
  if axis_name is None and num_local == num_groups:
    return BlockSegments(num_groups, (num_local, size), None, axis_name)
  first = group_ids[0] if n else jnp.zeros((), jnp.int32)
  return BlockSegments(num_groups, (num_local, size), first, axis_name)


def dataset_segmentation(dataset_ids: Array, num_datasets: int,
                         group_size: Optional[int],
                         axis_name: Optional[str] = None) -> Segmentation:
  """Datasets of a batch. With an int G, every block of G contiguous rows is
  in one dataset, `dataset_ids[l * G]` (the block's first row)."""
  n = dataset_ids.shape[0]
  if group_size is None:
    return ScatterSegments(dataset_ids, num_datasets, axis_name)
  size = _check_group_size(group_size, n)
  fine = BlockSegments(n // size, (n // size, size))
  return NestedSegments(fine, dataset_ids[::size], num_datasets, axis_name)


def _check_group_size(group_size, n: int) -> int:
  if (isinstance(group_size, bool) or not isinstance(group_size, int)
      or group_size < 1):
    raise ValueError(f"group_size must be a positive Python int (G contiguous "
                     f"rows per group) or None (any layout), got {group_size!r}")
  if n % group_size:
    raise ValueError(f"group_size={group_size} does not divide the batch N={n}")
  return group_size


def _columns(x: Array) -> list[Array]:
  return [x] if x.ndim == 1 else [x[:, k] for k in range(x.shape[1])]


def segment_stats(values: Array, segment_ids: Array, num_segments: int,
                  mask: Array, *, ddof: int = 0,
                  axis_name: Optional[str] = None,
                  segmentation: Optional[Segmentation] = None) -> SegmentStats:
  """Masked mean / std / count of `values [N]` or `[N, K]` per segment.

  `mask` is `[N]` (shared by every column) or `[N, K]`. A segment with
  `count <= ddof` gets std 0, one without spread gets std exactly 0.
  `segmentation` replaces the default `ScatterSegments(segment_ids, ...)`.
  """
  values = jnp.asarray(values, jnp.float32)
  seg = segmentation or ScatterSegments(segment_ids, num_segments, axis_name)
  m = jnp.asarray(mask, jnp.float32)
  masks = _columns(m) if m.ndim == values.ndim else [m] * len(_columns(values))
  stats = [mo.stats(ddof) for mo in seg.moments(_columns(values), masks)]
  if values.ndim == 1:
    return stats[0]
  return SegmentStats(*(jnp.stack(field, axis=-1) for field in zip(*stats)))
