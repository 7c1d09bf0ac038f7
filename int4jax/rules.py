"""Which layers become INT4: regex rules on module paths, shared by the linen and NNX rewriters."""

import dataclasses
import difflib
import re
import warnings
from typing import Dict, Iterable, Optional, Sequence, Tuple

from int4jax.config import Int4Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRule:
  """Layers whose '/'-joined module path fully matches `path` get `config`; config=None keeps
  them in floating point (an exclusion). The first matching rule wins."""

  # A regular expression, matched with re.fullmatch against e.g. "encoder/layer_0/attn/query".
  path: str = ".*"
  # The INT4 settings for the matched layers; None: leave them float.
  config: Optional[Int4Config] = Int4Config()

  def __post_init__(self):
    re.compile(self.path)  # a bad pattern fails here, not at the first trace
    if self.config is not None and not isinstance(self.config, Int4Config):
      raise TypeError(f"QuantRule.config must be an Int4Config or None, got "
                      f"{type(self.config).__name__}")


def make_rules(rules: Optional[Sequence[QuantRule]], config: Int4Config,
               exclude: Sequence[str]) -> Tuple[QuantRule, ...]:
  """`rules` as given, or: every path in `exclude` float, everything else `config`."""
  if rules is not None:
    if exclude:
      raise ValueError("pass either rules= or exclude= (write exclusions as "
                       "QuantRule(path=..., config=None) at the front of rules)")
    rules = tuple(rules)
    for r in rules:
      if not isinstance(r, QuantRule):
        raise TypeError(f"rules must hold QuantRule objects, got {type(r).__name__}")
    return rules
  if isinstance(exclude, str):
    exclude = (exclude,)
  return tuple(QuantRule(path=p, config=None) for p in exclude) + (QuantRule(config=config),)


def config_for(rules: Sequence[QuantRule], path: str, *aliases: str) -> Optional[Int4Config]:
  """The config of the first rule matching `path` (or one of its `aliases`: a contraction named
  by its param, `layer_0/mlp/linear`, also answers to its module's path `layer_0/mlp`), or None
  (float) when none matches."""
  for rule in rules:
    if any(re.fullmatch(rule.path, p) for p in (path,) + aliases):
      return rule.config
  return None


def unmatched(rules: Sequence[QuantRule], paths: Iterable[str]) -> Tuple[str, ...]:
  """The patterns of `rules` that fully match none of `paths`."""
  paths = tuple(paths)
  return tuple(r.path for r in rules if not any(re.fullmatch(r.path, p) for p in paths))


def check_all_match(rules: Sequence[QuantRule], paths: Iterable[str], strict: bool) -> None:
  """A rule or exclude pattern that matches no layer is a typo or a stale path: a warning, or with
  strict=True a ValueError, naming it and the layer paths there are."""
  paths = sorted(paths)
  missing = unmatched(rules, paths)
  if not missing:
    return
  close = sorted({c for m in missing
                  for c in difflib.get_close_matches(re.sub(r"[.*+?^$()\[\]{}|\\]", "", m),
                                                     paths, n=3, cutoff=0.5)})
  shown = ", ".join(paths[:12]) + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
  message = (f"int4jax.quantize_model: the pattern(s) {list(missing)} match no layer (patterns "
             f"must match a whole '/'-joined path)"
             + (f"; did you mean: {', '.join(close)}?" if close else "")
             + f" The layers are: {shown or 'none'}")
  if strict:
    raise ValueError(message)
  warnings.warn(message, UserWarning, stacklevel=4)


class QuantizationPlan(dict):
  """{layer path: its Int4Config, or None when it stays float}, plus `skipped`: {module path: why
  a contraction there is not an INT4 GEMM}: an Einsum layer whose equation is not a (tokens x in)
  @ (in x out) product (also in the dict, as float), or, with intercept_raw, a contraction a
  module runs itself without a weight operand, such as attention's QK^T. `describe()` lists all."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.skipped: Dict[str, str] = {}
    # INT4 Dense / DenseGeneral / Einsum layers that can serve a packed kernel (no batch dims;
    # a DenseGeneral contracting its input's trailing dims): how many leading kernel dims they
    # contract, after the transpose in kernel_perms for an Einsum. int4jax.export packs these.
    self.contracted_dims: Dict[str, int] = {}
    self.kernel_perms: Dict[str, Tuple[int, ...]] = {}
    # for a module's own contraction (intercept_raw): the '/'-joined path of the param it
    # contracts, which int4jax.export packs (`layer_0/attn/q_einsum/w`, `layer_0/mlp/linear`)
    self.param_paths: Dict[str, str] = {}
    # the module paths of contractions named by their param (`layer_0/mlp` for
    # `layer_0/mlp/linear`): rules may match those too
    self.scopes: set = set()
    # {(module path, reason): how many contractions there stay float for it}
    self.skip_counts: Dict[Tuple[str, str], int] = {}

  def describe(self) -> str:
    """One line per layer (INT4 with its main settings, or float), then one per module with a
    skipped contraction and the reason."""
    lines = []
    for path, config in sorted(self.items()):
      lines.append(f"{path}: float" if config is None else
                   f"{path}: INT4 (hadamard_block={config.hadamard_block}, scale_mode="
                   f"{config.scale_mode}, scale_levels={config.scale_levels}, grad_mode="
                   f"{config.grad_mode})")
    lines += [f"{path or '<root>'}: skipped, stays float: {why}"
              for path, why in sorted(self.skipped.items())]
    return "\n".join(lines)
