"""Pallas (Triton lowering) fused quantizer: gather -> weight -> block Hadamard -> abs-max ->
scale -> round -> int8, in one kernel, written in the layout the next GEMM reads.

Every GEMM operand of `int4_linear` is "quantize groups of a 2-D array along one axis":

  forward X    (M, K), groups = rows,    Hadamard along K, qmax 7 (INT4)
  forward W    (K, N), groups = columns, Hadamard along K, qmax 7
  dX's dY      (M, N), groups = rows,    no Hadamard,     qmax 119 (the fused bit split R*hi+lo)
  dW's dY      (M, N), groups = columns, no Hadamard,     qmax 119, rows gathered by leverage-score
                                          sampling and weighted by 1/p

so one kernel covers all four: `axis` is the reduced axis (1: a scale per row, 0: per column),
`rows`/`row_weights` gather and weight dim-0 rows first, `transpose_out` writes the int8 result
transposed, and `both_layouts` writes it twice from the same registers, as is and transposed,
the two K-major copies of a forward operand in one pass over the input (X (M, K) for Y and
X^T (K, M) for dW; W^T (N, K) for Y and W (K, N) for dX). One program owns `block_groups`
groups; it walks the reduced axis in chunks
(`block_red` long, or one Hadamard block, below) twice (pass 1: abs-max of the transformed
values, pass 2: quantize and store), so any length fits in registers and the input is read
twice, never written back in float.

With a Hadamard the chunk is one Hadamard block b (at least 16, Triton's smallest dot, and one
scale group), and its transform one dense (b, b) matmul in float32 at HIGHEST precision: no work
on zero off-diagonal blocks, except that b < 16 (or a group longer than b) gives a BlockDiag of
copies of H_b. Rounding matches
`int4jax.quantizers.int4_quant.quantize`: round-half-even built from floor (Triton has no round),
or stochastic floor(v + u), clipped to [qmin, qmax]; a group holding NaN/Inf gets a NaN scale and
zero integers. The dither u is either computed in the kernel from `seed` (the two words of
`int4_quant.dither_seed(key)`), by the same counter-based hash of the element's flat index as
`int4_quant.uniform_dither` (so nothing is read from memory for it), or handed in as an array.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
import numpy as np

from int4jax.kernels.layout import pad_to, round_up
from int4jax.quantizers import hadamard, two_level
from int4jax.quantizers.int4_quant import MIN_SCALE


MIN_DOT = 16  # Triton's smallest dot dimension


@dataclasses.dataclass(frozen=True)
class QuantizeBlocks:
  block_groups: int = 64  # groups per program
  # chunk length along the reduced axis when there is no Hadamard (with one, the chunk is the
  # Hadamard block; see quantize_pallas)
  block_red: int = 128
  num_warps: int = 4

  def __post_init__(self):
    for name in ("block_groups", "block_red"):
      v = getattr(self, name)
      if v < 16 or v & (v - 1):
        raise ValueError(f"QuantizeBlocks.{name} must be a power of two >= 16, got {v}")


def _round_half_even(v):
  r = jnp.floor(v + 0.5)
  tie = (r - v) == 0.5
  odd = (r - 2.0 * jnp.floor(r * 0.5)) != 0.0
  return jnp.where(tie & odd, r - 1.0, r)


def _group_multipliers(x, scale, safe_range, group, levels, qmin, qmax, search):
  """Per element, its group's multiplier for a tile x (groups first, contraction second): the
  ceil rule clip(ceil(L * groupmax|x| / R), 1, L), then (search > 1) the candidate with the least
  fixed-point squared error, with one masked max / sum per group of the chunk (Triton has no
  reshape) and the same float operations as int4jax.quantizers.two_level."""
  col = lax.broadcasted_iota(jnp.int32, x.shape, 1) // group
  mult = jnp.zeros(x.shape, jnp.float32)
  for j in range(x.shape[1] // group):
    inside = col == j
    gmax = jnp.max(jnp.where(inside, jnp.abs(x), 0.0), axis=1)
    m_j = jnp.clip(jnp.ceil(levels * gmax / safe_range), 1.0, float(levels))
    best, best_err = m_j, None
    for step in range(search if search > 1 else 0):
      cand = jnp.maximum(m_j - step, 1.0)
      v = x / (scale[:, None] * cand[:, None])
      d = cand[:, None] * (v - _round_half_even(jnp.clip(v, float(qmin), float(qmax))))
      counts = jnp.minimum(jnp.floor(d * d * two_level.ERROR_UNITS),
                           float(two_level.ERROR_CAP))
      counts = jnp.where(inside & jnp.isfinite(counts), counts, 0.0).astype(jnp.int32)
      err = jnp.sum(counts, axis=1)
      if best_err is None:
        best_err = err
      else:
        better = err < best_err
        best, best_err = jnp.where(better, cand, best), jnp.where(better, err, best_err)
    mult = jnp.where(inside, best[:, None], mult)
  return mult


def _hash_uniform(index, seed0, seed1):
  """U(0, 1) on a 16-bit grid from a uint32 element index: two rounds of a xor-shift-multiply
  finalizer keyed by (seed0, seed1), written out here (the definition is
  int4jax.quantizers.int4_quant.uniform_dither; the tests compare the two bit for bit)."""
  def mix(v):
    v = v ^ (v >> 16)
    v = v * jnp.uint32(0x7FEB352D)
    v = v ^ (v >> 15)
    v = v * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)
  h = mix(mix(index ^ seed0) + seed1)
  return ((h >> 16).astype(jnp.float32) + 0.5) * (1.0 / 65536)


def _kernel(*refs, axis, gather, weighted, dither_mode, transform, groups_first, both_layouts,
            num_chunks, block_red, qmin, qmax, group, levels, search, n_cols):
  refs = list(refs)
  # Outputs: the groups-first int8 array and/or the reduced-first one (None: not written), scales.
  s_ref = refs.pop()
  red_ref = refs.pop() if both_layouts or not groups_first else None
  groups_ref = refs.pop() if both_layouts or groups_first else None
  x_ref = refs.pop(0)
  idx_ref = refs.pop(0) if gather else None
  w_ref = refs.pop(0) if weighted else None
  u_ref = refs.pop(0) if dither_mode is not None else None  # the dither, or its seed words
  h_ref = refs.pop(0) if transform else None
  block_groups = s_ref.shape[0]
  g0 = pl.program_id(0) * block_groups

  def tile(ref, c, dim0_idx=None):
    """The (block_groups, block_red) tile of chunk c, groups first, optionally gathered."""
    red = pl.ds(pl.multiple_of(c * block_red, block_red), block_red)
    grp = pl.ds(g0, block_groups)
    if axis == 1:  # groups are dim-0 rows
      return ref[grp if dim0_idx is None else dim0_idx, red]
    return ref[red if dim0_idx is None else dim0_idx, grp].T  # groups are columns

  def transformed(c):
    idx = None
    if gather:
      red = pl.ds(pl.multiple_of(c * block_red, block_red), block_red)
      idx = idx_ref[pl.ds(g0, block_groups)] if axis == 1 else idx_ref[red]
    x = tile(x_ref, c, idx).astype(jnp.float32)
    if weighted:
      red = pl.ds(pl.multiple_of(c * block_red, block_red), block_red)
      w = w_ref[pl.ds(g0, block_groups)][:, None] if axis == 1 else w_ref[red][None, :]
      x = x * w
    if transform:
      x = plt.dot(x, h_ref[...], precision=lax.Precision.HIGHEST)
    return x

  def absmax(c, carry):
    amax, bad = carry
    x = transformed(c)
    finite = jnp.isfinite(x)
    amax = jnp.maximum(amax, jnp.max(jnp.where(finite, jnp.abs(x), 0.0), axis=1))
    bad = bad + jnp.sum(jnp.where(finite, 0.0, 1.0), axis=1)
    return amax, bad

  def noise(c):
    """The U(0, 1) tile of chunk c (groups first): read, or hashed from the element's flat index
    in the (gathered) unpadded array, as uniform_dither numbers it (mod 2^32)."""
    if dither_mode == "array":
      return tile(u_ref, c)
    shape = (block_groups, block_red)
    grp = (g0 + lax.broadcasted_iota(jnp.int32, shape, 0)).astype(jnp.uint32)
    red = (c * block_red + lax.broadcasted_iota(jnp.int32, shape, 1)).astype(jnp.uint32)
    row, col = (grp, red) if axis == 1 else (red, grp)
    return _hash_uniform(row * jnp.uint32(n_cols) + col, u_ref[0], u_ref[1])

  zeros = jnp.zeros((block_groups,), jnp.float32)
  amax, bad = lax.fori_loop(0, num_chunks, absmax, (zeros, zeros))
  scale = jnp.where(amax > 0, jnp.maximum(amax / (qmax * levels), MIN_SCALE), 1.0)
  scale = jnp.where(bad == 0, scale, jnp.nan)
  s_ref[...] = scale
  safe_range = jnp.where((bad == 0) & (amax > 0), amax, 1.0)
  # = scale where the group is finite and non-zero
  safe_scale = jnp.maximum(safe_range / (qmax * levels), MIN_SCALE)

  def store(c, _):
    x = transformed(c)
    if levels > 1:
      mult = _group_multipliers(x, safe_scale, safe_range, group, levels, qmin, qmax, search)
      v = x / (scale[:, None] * mult)
    else:
      v = x / scale[:, None]
    v = jnp.clip(v, float(qmin), float(qmax))
    if dither_mode is not None:
      v = jnp.clip(jnp.floor(v + noise(c)), float(qmin), float(qmax))
    else:
      v = _round_half_even(v)
    if levels > 1:
      v = v * mult
    q = jnp.where(jnp.isfinite(v), v, 0.0).astype(jnp.int8)
    red = pl.ds(pl.multiple_of(c * block_red, block_red), block_red)
    if groups_ref is not None:
      groups_ref[:, red] = q
    if red_ref is not None:
      red_ref[red, :] = q.T
    return 0

  lax.fori_loop(0, num_chunks, store, 0)


def _block_diag_hadamard(block: int, size: int) -> jax.Array:
  return jnp.asarray(np.kron(np.eye(size // block), hadamard._hadamard_numpy(block)),
                     jnp.float32)


@functools.partial(jax.jit, static_argnames=("axis", "qmin", "qmax", "hadamard_block", "group",
                                             "levels", "search", "transpose_out",
                                             "both_layouts", "blocks", "interpret"))
def quantize_pallas(x: jax.Array, *, axis: int, qmin: int, qmax: int, hadamard_block: int = 1,
                    group: int = 16, levels: int = 1, search: int = 1,
                    rows: Optional[jax.Array] = None, row_weights: Optional[jax.Array] = None,
                    dither: Optional[jax.Array] = None, seed: Optional[jax.Array] = None,
                    transpose_out: bool = False, both_layouts: bool = False,
                    blocks: QuantizeBlocks = QuantizeBlocks(), interpret: bool = False):
  """(int8 values, float32 scales) of the groups of x (2-D) along `axis`; see the module doc.

  group, levels: two-level scales (int4jax/quantizers/two_level.py): the scale is the row's
    abs-max / (qmax * levels) and the int8 values are m * q with one multiplier m in 1..levels
    per `group` consecutive reduced elements; levels=1 is plain abs-max. search: multiplier
    candidates per group (two_level's search; ignored, as there, when rounding stochastically).

  rows: optional int32 (R,) indices of dim-0 rows to gather first (x[rows]); row_weights:
    optional (R,) multipliers of those rows. Stochastic rounding: seed, the (2,) uint32 words of
    `int4_quant.dither_seed(key)` (the kernel hashes the dither of `uniform_dither(key, shape)`
    itself, shape being the gathered one), or dither, that U(0, 1) noise as an array; neither
    rounds to nearest. hadamard_block must divide x's reduced length.
  Returns q with the gathered shape (transposed if transpose_out) and scales of shape (groups,);
  with both_layouts, ((q, q.T), scales), both written by the same pass (transpose_out must then
  be False).
  """
  if x.ndim != 2 or axis not in (0, 1):
    raise ValueError(f"quantize_pallas takes a 2-D array and axis 0 or 1, got {x.shape}, {axis}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"quantize_pallas takes a float array, got {x.dtype}")
  n_rows = x.shape[0] if rows is None else rows.shape[0]
  shape = (n_rows, x.shape[1])
  for name, v, want in (("row_weights", row_weights, (n_rows,)), ("dither", dither, shape),
                        ("seed", seed, (2,))):
    if v is not None and v.shape != want:
      raise ValueError(f"{name} must have shape {want}, got {v.shape}")
  if dither is not None and seed is not None:
    raise ValueError("quantize_pallas takes a dither array or a seed, not both")
  if both_layouts and transpose_out:
    raise ValueError("quantize_pallas: both_layouts already writes the transposed copy; leave "
                     "transpose_out False")
  if seed is not None and seed.dtype != jnp.uint32:
    raise TypeError(f"seed must be uint32 (int4_quant.dither_seed(key)), got {seed.dtype}")
  n_groups, n_red = (shape[0], shape[1]) if axis == 1 else (shape[1], shape[0])
  b = hadamard_block
  if not hadamard.is_power_of_two(b) or n_red % b:
    raise ValueError(f"hadamard_block={b} must be a power of two dividing the reduced length "
                     f"{n_red}; pad first (int4jax.quantizers.pad_to_block)")
  if levels > 1 and search > 1 and group > two_level.MAX_SEARCH_GROUP:
    raise ValueError(f"quantize_pallas: the multiplier search counts errors in int32 for groups "
                     f"of at most {two_level.MAX_SEARCH_GROUP} elements, got group={group}; use "
                     "search=1")
  if levels > 1 and (not hadamard.is_power_of_two(group) or n_red % group):
    raise ValueError(f"group={group} must be a power of two dividing the reduced length {n_red}; "
                     "pad first (int4jax.quantizers.pad_to_block)")
  bg = blocks.block_groups
  # The chunk walked along the reduced axis. With a Hadamard it is one Hadamard block (at least
  # Triton's smallest dot, and a whole scale group), so the chunk's dense transform matrix holds no
  # zero blocks beyond those minimums; without one, blocks.block_red.
  min_chunk = group if levels > 1 else 1
  br = max(b, MIN_DOT, min_chunk) if b > 1 else max(blocks.block_red, min_chunk)
  gp, rp = round_up(max(n_groups, 1), bg), round_up(max(n_red, 1), br)

  # Zero padding: padded groups are all-zero (scale 1, sliced off); padded reduced entries add
  # nothing to the abs-max or the Hadamard blocks (b divides the true length).
  padded = (gp, rp) if axis == 1 else (rp, gp)
  operands, in_specs = [], []
  if rows is None:
    operands.append(pad_to(x, padded))
  else:
    # The gather reads x's own rows; pad the index vector (with row 0) and x's columns only.
    rows = rows.astype(jnp.int32)
    operands.append(pad_to(x, (x.shape[0], padded[1])))
    operands.append(jnp.pad(rows, (0, padded[0] - n_rows)))
  in_specs.append(pl.BlockSpec(operands[0].shape, lambda i: (0, 0)))
  if rows is not None:
    in_specs.append(pl.BlockSpec(operands[1].shape, lambda i: (0,)))
  if row_weights is not None:
    operands.append(jnp.pad(row_weights.astype(jnp.float32), (0, padded[0] - n_rows)))
    in_specs.append(pl.BlockSpec((padded[0],), lambda i: (0,)))
  if dither is not None:
    operands.append(pad_to(dither.astype(jnp.float32), padded))
    in_specs.append(pl.BlockSpec(padded, lambda i: (0, 0)))
  if seed is not None:
    operands.append(seed)
    in_specs.append(pl.BlockSpec((2,), lambda i: (0,)))
  if b > 1:
    operands.append(_block_diag_hadamard(b, br))
    in_specs.append(pl.BlockSpec((br, br), lambda i: (0, 0)))

  groups_first = (axis == 1) != transpose_out
  kernel = functools.partial(
      _kernel, axis=axis, gather=rows is not None, weighted=row_weights is not None,
      dither_mode="array" if dither is not None else ("hash" if seed is not None else None),
      transform=b > 1, groups_first=groups_first, both_layouts=both_layouts,
      num_chunks=rp // br, block_red=br, qmin=qmin,
      qmax=qmax, group=group, levels=levels,
      search=search if dither is None and seed is None else 1, n_cols=shape[1])
  groups_out = (jax.ShapeDtypeStruct((gp, rp), jnp.int8), pl.BlockSpec((bg, rp), lambda i: (i, 0)))
  red_out = (jax.ShapeDtypeStruct((rp, gp), jnp.int8), pl.BlockSpec((rp, bg), lambda i: (0, i)))
  # Output order: the groups-first array (if written), the reduced-first one (if written), scales.
  outs = [groups_out, red_out] if both_layouts else [groups_out if groups_first else red_out]
  outs.append((jax.ShapeDtypeStruct((gp,), jnp.float32), pl.BlockSpec((bg,), lambda i: (i,))))
  *qs, scale = pl.pallas_call(
      kernel,
      out_shape=tuple(shape for shape, _ in outs),
      grid=(gp // bg,),
      in_specs=in_specs,
      out_specs=tuple(spec for _, spec in outs),
      compiler_params=plt.CompilerParams(num_warps=blocks.num_warps, num_stages=1),
      interpret=interpret,
      name="int4jax_quantize",
  )(*operands)
  groups_q = lambda q: q[:n_groups, :n_red]
  red_q = lambda q: q[:n_red, :n_groups]
  scale = scale[:n_groups]
  if both_layouts:  # (x's layout, its transpose)
    as_is, transposed = (groups_q(qs[0]), red_q(qs[1])) if axis == 1 else (red_q(qs[1]),
                                                                         groups_q(qs[0]))
    return (as_is, transposed), scale
  return (groups_q if groups_first else red_q)(qs[0]), scale


def quantize_reference(x: jax.Array, *, axis: int, qmin: int, qmax: int, hadamard_block: int = 1,
                       group: int = 16, levels: int = 1, search: int = 1, rows=None,
                       row_weights=None, dither=None, key=None, transpose_out: bool = False,
                       both_layouts: bool = False):
  """Pure-jnp meaning of `quantize_pallas`: the library's own quantizer (gather, weight, block
  Hadamard, then int4jax.quantizers.two_level). key: stochastic rounding with
  uniform_dither(key, shape) (the kernel's `seed` is dither_seed(key))."""
  if rows is not None:
    x = x[rows]
  x = x.astype(jnp.float32)
  if row_weights is not None:
    x = x * row_weights.astype(jnp.float32)[:, None]
  x = hadamard.block_hadamard(x, hadamard_block, axis)
  q, scale = two_level.quantize_two_level(x, axis, qmin, qmax, group=group, levels=levels,
                                          search=search, dither=dither, key=key)
  if both_layouts:
    if transpose_out:
      raise ValueError("quantize_reference: both_layouts already gives the transposed copy; "
                       "leave transpose_out False")
    return (q, q.T), scale.reshape(-1)
  return (q.T if transpose_out else q), scale.reshape(-1)
