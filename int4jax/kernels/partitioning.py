"""Sharding rules for the kernel backends' GEMMs (jax.experimental.custom_partitioning).

XLA's own int8 dot is partitioned by GSPMD/Shardy like any dot. A Pallas, Mosaic or Triton kernel
is a custom call the partitioner cannot see into: left alone, it would gather every operand and
run the whole GEMM on each device. Wrapped here, each GEMM says how it splits:

  - the free dims of both operands (tokens, output features) keep their shards, and each device
    runs the kernel on its shard with its slice of the rank-1 scales (B's free dim is gathered
    when its mesh axis already splits A, as under FSDP with data-parallel tokens);
  - a split contraction runs XLA's int8 dot per shard (the kernel's GEMM shape is the unsplit
    one), sums the int32 partial products exactly (a psum), then applies the scales, so the
    result equals the unsplit GEMM bit for bit.

Scales the caller leaves out (None) or gives per tensor (shape ()) are passed as (M, 1) / (1, N)
arrays (ones, or the scalar broadcast), the same values per element. Used when more than one
device is visible (int4jax.backend); on one device the kernels run as they are.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from int4jax.kernels import int_gemm as xla_gemm

# contracting dims -> (the operands' factors, the result's): "m"/"n" the free dims, "k" the
# contraction, "o"/"p" the unit dims of the (M, 1) / (1, N) scales
_RULES = {((1,), (0,)): "m k, k n, m o, p n -> m n",
          ((1,), (1,)): "m k, n k, m o, p n -> m n",
          ((0,), (0,)): "k m, k n, m o, p n -> m n",
          ((0,), (1,)): "k m, n k, m o, p n -> m n"}


def _spec2(sharding) -> tuple:
  spec = tuple(sharding.spec)
  return spec + (None,) * (2 - len(spec))


def _mesh_axes(entry) -> set:
  """The mesh axes one PartitionSpec entry names (None, a name, or a tuple of names)."""
  if entry is None:
    return set()
  return set(entry) if isinstance(entry, tuple) else {entry}


@functools.lru_cache(maxsize=256)
def _partitioned(gemm, contracting, scaled: bool):
  """gemm(a, b, contracting[, row_scale, col_scale]) with this contracting, as a partitioned
  op (scaled: the ScaledGemm signature; else the raw int32 IntGemm)."""
  (ca,), (cb,) = contracting

  @custom_partitioning
  def product(a, b, *scales):
    return gemm(a, b, contracting, *scales)

  def partition(mesh, arg_shapes, result_shape):
    a_spec, b_spec = _spec2(arg_shapes[0].sharding), _spec2(arg_shapes[1].sharding)
    m_axes, n_axes, k_axes = a_spec[1 - ca], b_spec[1 - cb], a_spec[ca]
    if _mesh_axes(n_axes) & (_mesh_axes(m_axes) | _mesh_axes(k_axes)):
      # A mesh axis shards one dim of the result at most: when B's free dim is split over an
      # axis that already splits A's (FSDP: tokens and the weight's columns both over "data"),
      # B is gathered along it and the tokens keep their shards.
      n_axes = None
    a_out, b_out = [None, None], [None, None]
    a_out[1 - ca], a_out[ca] = m_axes, k_axes
    b_out[1 - cb], b_out[cb] = n_axes, k_axes
    named = lambda *spec: NamedSharding(mesh, P(*spec))

    def lower(a, b, *scales):
      if k_axes is None:
        return gemm(a, b, contracting, *scales)
      # a split contraction: exact int32 partial sums (XLA's int8 dot), summed, then scaled
      total = jax.lax.psum(xla_gemm.int_gemm_xla(a, b, contracting), k_axes)
      if not scaled:
        return total
      row, col = scales  # the kernels' epilogue: the smaller scale first
      return total.astype(jnp.float32) * jnp.minimum(row, col) * jnp.maximum(row, col)

    args = (named(*a_out), named(*b_out))
    if scaled:
      args += (named(m_axes, None), named(None, n_axes))
    return mesh, lower, named(m_axes, n_axes), args

  rule = _RULES[contracting] if scaled else _RULES[contracting].replace(", m o, p n", "")
  product.def_partition(partition=partition, sharding_rule=rule, reduction_factors=("k",),
                        need_replication_factors=("o", "p") if scaled else ())
  return product


def _key(contracting):
  (ca,), (cb,) = contracting
  return ((int(ca),), (int(cb),))


def scaled_gemm(gemm):
  """`gemm` (a ScaledGemm) with a sharding rule; the same signature."""
  def run(a, b, contracting, row_scale=None, col_scale=None):
    (ca,), (cb,) = contracting
    m, n = a.shape[1 - ca], b.shape[1 - cb]
    rows = jnp.broadcast_to(jnp.float32(1) if row_scale is None else row_scale, (m, 1))
    cols = jnp.broadcast_to(jnp.float32(1) if col_scale is None else col_scale, (1, n))
    return _partitioned(gemm, _key(contracting), True)(
        a, b, rows.astype(jnp.float32), cols.astype(jnp.float32))
  return run


def int_gemm(gemm):
  """`gemm` (an IntGemm: int8 x int8 -> int32) with a sharding rule; the same signature."""
  return lambda a, b, contracting: _partitioned(gemm, _key(contracting), False)(a, b)
