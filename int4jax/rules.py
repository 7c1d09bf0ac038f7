"""Which layers become INT4: regex rules on module paths, shared by the linen and NNX rewriters."""

import dataclasses
import re
from typing import Optional, Sequence, Tuple

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


def config_for(rules: Sequence[QuantRule], path: str) -> Optional[Int4Config]:
  """The config of the first rule matching `path`, or None (float) when none matches."""
  for rule in rules:
    if re.fullmatch(rule.path, path):
      return rule.config
  return None
