"""INT4 for an existing NNX model: swap matched nnx.Linear layers for int4jax.nnx.Linear."""

from typing import Dict, Optional, Sequence

from flax import nnx

from int4jax.config import Int4Config
from int4jax.nnx.linear import Linear
from int4jax.rules import QuantRule, config_for, make_rules


def _path(path) -> str:
  return "/".join(str(p) for p in path)


def _set_child(parent, name, value):
  if isinstance(name, int) or not hasattr(parent, "__dict__") or isinstance(parent, (list, dict)):
    parent[name] = value
  else:
    setattr(parent, name, value)


def _get_child(parent, name):
  if isinstance(parent, (list, tuple, dict)) or not hasattr(parent, str(name)):
    return parent[name]
  return getattr(parent, str(name))


def quantize_nnx(model: nnx.Module, rules: Optional[Sequence[QuantRule]] = None, *,
                 config: Int4Config = Int4Config(), exclude: Sequence[str] = (),
                 rngs: Optional[nnx.Rngs] = None) -> Dict[str, Optional[Int4Config]]:
  """Replaces, IN PLACE, every nnx.Linear whose path matches a rule with a config by an
  int4jax.nnx.Linear sharing its Params. Returns the plan {path: config or None (float)}.

  rngs: where the INT4 layers draw backward randomness ('quant' stream, or 'default'); without
  it a stochastic config can run forward but a gradient raises, or pass rngs= at call time.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"quantize_model: expected an nnx.Module, got {type(model).__name__}")
  rules = make_rules(rules, config, exclude)
  plan = {}
  found = [(tuple(p), node) for p, node in nnx.iter_graph(model)
           if isinstance(node, nnx.Linear) and not isinstance(node, Linear)]
  if any(not p for p, _ in found):
    raise TypeError("quantize_model: the model itself is an nnx.Linear; use int4jax.nnx.Linear")
  for path, layer in found:
    cfg = config_for(rules, _path(path))
    plan[_path(path)] = cfg
    if cfg is None:
      continue
    parent = model
    for name in path[:-1]:
      parent = _get_child(parent, name)
    _set_child(parent, path[-1], Linear.from_linear(layer, cfg, rngs))
  return plan


def calibrate(model: nnx.Module, *args, **kwargs):
  """Runs `model(*args, **kwargs)` once, eagerly, so every int4jax.nnx.Linear makes its
  quantizer state (LSQ scales, searched Hadamard block) from this batch. Returns the output."""
  return model(*args, **kwargs)
