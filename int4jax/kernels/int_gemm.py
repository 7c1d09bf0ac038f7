"""Integer GEMM on INT4 values held in int8, int32 accumulation: XLA and a reference.

Both take the contracting dims as `lax.dot_general` does (no batch dims).
"""

import jax
import jax.numpy as jnp
from jax import lax

INT32_MAX = 2**31 - 1


def max_exact_contraction(max_abs_a: int, max_abs_b: int) -> int:
  """Longest contraction whose int32 accumulation cannot overflow: every product is at most
  max_abs_a * max_abs_b in magnitude, so K terms stay below 2^31 - 1 while K <= this."""
  return INT32_MAX // (max_abs_a * max_abs_b)


def check_int8_operands(a, b):
  if a.dtype != jnp.int8 or b.dtype != jnp.int8:
    raise TypeError(f"integer GEMM takes int8 operands, got {a.dtype} and {b.dtype}")


def gemm_shape(a, b, contracting):
  """(M, N, K) of a 2-D GEMM contracting a's dim ca with b's dim cb; raises on a mismatch."""
  (ca,), (cb,) = contracting
  if a.ndim != 2 or b.ndim != 2 or ca not in (0, 1) or cb not in (0, 1):
    raise ValueError(f"integer GEMM takes 2-D operands and one contracting dim each, got shapes "
                     f"{a.shape}, {b.shape} and contracting dims {contracting}")
  if a.shape[ca] != b.shape[cb]:
    raise ValueError(f"contracting dims differ: a.shape[{ca}]={a.shape[ca]}, "
                     f"b.shape[{cb}]={b.shape[cb]}")
  return a.shape[1 - ca], b.shape[1 - cb], a.shape[ca]


def _row_major_transpose(a: jax.Array) -> jax.Array:
  """a.T as a physical int8 copy, made by XLA:CPU's own transpose routine.

  Two things stand in the way, and each costs more than the copy itself:
  - the algebraic simplifier folds a transpose that feeds a dot into the dot's dimension
    numbers, and layout assignment makes it a column-major bitcast, either of which brings back
    the slow lhs-contracts-dim-0 dot; a barrier on a.T with a unit dim added (which XLA lays
    out row major) stops both;
  - loop fusion pulls the quantizer that produced `a` into the copy and recomputes it in
    transposed order, reading its float input with a row-length stride, many times slower than
    the copy alone (experiments/results/bench_cpu_linear_3cabe91.txt is the benchmark before
    this). A conditional is a fusion boundary: inside it `a` is a materialized parameter.
    Both branches are the same copy, so the predicate (any runtime scalar; a[0, 0] here) never
    changes the result.
  Both dims stay dims, so a sharded operand stays sharded (flattening it made GSPMD gather it
  whole). The barrier alone does not stop fusion: XLA:CPU expands barriers before it fuses.
  """
  copy = lambda t: lax.optimization_barrier(t.T[:, :, None])[:, :, 0]
  if a.size == 0:
    return copy(a)
  return lax.cond(a[0, 0] == 0, copy, copy, a)


def int_gemm_xla(a: jax.Array, b: jax.Array, contracting) -> jax.Array:
  """lax.dot_general(int8, int8) -> int32: cuBLAS int8 GEMM on GPU, exact everywhere.

  XLA:CPU's int8 dot is several times slower when the lhs contracts over its first dim (dW's
  X^T dY layout), so on CPU that lhs is first copied transposed (one int8 pass; see
  `_row_major_transpose`).
  """
  check_int8_operands(a, b)
  (ca,), (cb,) = contracting
  if a.ndim == 2 and ca == 0 and jax.default_backend() == "cpu":
    a, ca = _row_major_transpose(a), 1
  return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=jnp.int32)


def int_gemm_reference(a: jax.Array, b: jax.Array, contracting) -> jax.Array:
  """The same product with both operands widened to int32 first (slow, obviously exact)."""
  check_int8_operands(a, b)
  return lax.dot_general(a.astype(jnp.int32), b.astype(jnp.int32), (contracting, ((), ())),
                         preferred_element_type=jnp.int32)
