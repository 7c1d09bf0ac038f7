"""Contractions as batches of 2-D matmuls, for the layers that are not plain Dense/Linear.

`int4_linear` multiplies (tokens, K) by (K, N). A `lax.dot_general` with activations on the left
and weights on the right, or a two-operand einsum of that kind, is such a product per batch
index once its dims are grouped: batch dims first, then the activation's free dims (the tokens),
then the contracted dims (K); the weight's free dims are N. This module does that bookkeeping;
it knows nothing of quantization or Flax.
"""

import math
from typing import Callable, Tuple

import jax
import jax.numpy as jnp

DimensionNumbers = Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]],
                         Tuple[Tuple[int, ...], Tuple[int, ...]]]


def check_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers):
  """(lhs contracting, rhs contracting, lhs batch, rhs batch) as int tuples; raises a ValueError
  for mismatched or unmappable dimension numbers."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, lb, rb = (tuple(int(a) for a in t) for t in (lc, rc, lb, rb))
  if len(lc) != len(rc) or len(lb) != len(rb):
    raise ValueError(f"int4 dot_general: mismatched dimension_numbers {dimension_numbers}")
  if not lc:
    raise ValueError("int4 dot_general: needs at least one contracting dim (an outer product "
                     "has no GEMM to quantize)")
  for a, b in zip(lc + lb, rc + rb):
    if lhs_shape[a] != rhs_shape[b]:
      raise ValueError(f"int4 dot_general: lhs dim {a} ({lhs_shape[a]}) != rhs dim {b} "
                       f"({rhs_shape[b]}) in {dimension_numbers}")
  return lc, rc, lb, rb


def as_matmuls(lhs: jax.Array, rhs: jax.Array, dimension_numbers
               ) -> Tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
  """(x (B, T, K), w (B, K, N), unflatten): lax.dot_general(lhs, rhs, dimension_numbers) equals
  unflatten(x @ w), with unflatten giving dot_general's output layout (batch, lhs free, rhs
  free). B is 1 without batch dims."""
  lc, rc, lb, rb = check_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lfree = tuple(a for a in range(lhs.ndim) if a not in lc + lb)
  rfree = tuple(a for a in range(rhs.ndim) if a not in rc + rb)
  batch_shape = tuple(lhs.shape[a] for a in lb)
  lfree_shape = tuple(lhs.shape[a] for a in lfree)
  rfree_shape = tuple(rhs.shape[a] for a in rfree)
  k = math.prod(lhs.shape[a] for a in lc)
  nb = math.prod(batch_shape)
  x = jnp.transpose(lhs, lb + lfree + lc).reshape(nb, math.prod(lfree_shape), k)
  w = jnp.transpose(rhs, rb + rc + rfree).reshape(nb, k, math.prod(rfree_shape))
  return x, w, lambda y: y.reshape(batch_shape + lfree_shape + rfree_shape)


def einsum_dimension_numbers(spec: str, lhs_ndim: int, rhs_ndim: int
                             ) -> Tuple[DimensionNumbers, Tuple[int, ...]]:
  """(dimension_numbers, perm) such that jnp.einsum(spec, lhs, rhs) equals
  lax.dot_general(lhs, rhs, dimension_numbers).transpose(perm), for a two-operand einsum whose
  every label is a batch (in both operands and the output), contracted (in both, not the output)
  or free (in one operand and the output) dim. Raises a ValueError saying why otherwise (e.g. a
  label summed within one operand, a repeated label, or no contraction at all)."""
  spec = spec.replace(" ", "")
  if "->" not in spec or spec.count(",") != 1:
    raise ValueError(f"einsum {spec!r}: needs two operands and an explicit output ('ab,bc->ac')")
  inputs, out = spec.split("->")
  lhs, rhs = inputs.split(",")
  if "..." in rhs:
    raise ValueError(f"einsum {spec!r}: an ellipsis in the weight operand is not supported")
  if "..." in lhs:
    n = lhs_ndim - len(lhs.replace("...", ""))
    if n < 0:
      raise ValueError(f"einsum {spec!r}: the activation has {lhs_ndim} dims, fewer than named")
    fill = "".join(chr(0x100 + i) for i in range(n))  # labels no spec uses
    lhs, out = lhs.replace("...", fill), out.replace("...", fill)
  if "..." in out:
    raise ValueError(f"einsum {spec!r}: an ellipsis in the output needs one in the activation")
  if len(lhs) != lhs_ndim or len(rhs) != rhs_ndim:
    raise ValueError(f"einsum {spec!r}: operands with {lhs_ndim} and {rhs_ndim} dims")
  for name, labels in (("activation", lhs), ("weight", rhs), ("output", out)):
    if len(set(labels)) != len(labels):
      raise ValueError(f"einsum {spec!r}: a label repeats in the {name} (a diagonal or trace)")
  for label in set(lhs) ^ set(rhs):
    if label not in out:
      raise ValueError(f"einsum {spec!r}: label {label!r} is summed within one operand")
  if set(out) - set(lhs) - set(rhs):
    raise ValueError(f"einsum {spec!r}: the output names a label no operand has")
  batch = [c for c in lhs if c in rhs and c in out]
  contracted = [c for c in lhs if c in rhs and c not in out]
  if not contracted:
    raise ValueError(f"einsum {spec!r}: contracts no dim (an outer product has no GEMM)")
  dims = ((tuple(lhs.index(c) for c in contracted), tuple(rhs.index(c) for c in contracted)),
          (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)))
  produced = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
  return dims, tuple(produced.index(c) for c in out)
