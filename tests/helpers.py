"""Shared test helpers: data makers, jaxpr inspection, relative errors."""

import jax
import jax.extend as jex
import jax.numpy as jnp


def make_xw(m, k, n, seed=0, outliers=False, outlier_scale=100.0, dtype=jnp.float32):
  kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (m, k))
  if outliers:  # a few activation channels much larger, as in pretrained transformers
    channels = jax.random.choice(kc, k, (max(1, k // 64),), replace=False)
    x = x.at[:, channels].multiply(outlier_scale)
  w = jax.random.normal(kw, (k, n)) / jnp.sqrt(k)
  return x.astype(dtype), w.astype(dtype)


def rel_err(a, b):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def cosine(a, b):
  a, b = jnp.ravel(a).astype(jnp.float32), jnp.ravel(b).astype(jnp.float32)
  return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def integer_dots(jaxpr):
  """Every dot_general in a (closed) jaxpr, sub-jaxprs included, with int8 operands -> int32."""
  found = []

  def visit(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "dot_general":
        ins = [v.aval.dtype for v in eqn.invars]
        if all(d == jnp.int8 for d in ins) and eqn.outvars[0].aval.dtype == jnp.int32:
          found.append(eqn)
      for sub in jex.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return found


def all_dots(jaxpr):
  found = []

  def visit(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(eqn)
      for sub in jex.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return found


def intermediate_shapes(jaxpr):
  """The shape of every value a (closed) jaxpr computes, sub-jaxprs included."""
  shapes = []

  def visit(jx):
    for eqn in jx.eqns:
      shapes.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for sub in jex.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return shapes
