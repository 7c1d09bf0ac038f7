"""Package version and the oldest jax it supports (checked at import)."""

__version__ = "0.1.0"
MIN_JAX = (0, 10, 2)


def parse_version(text: str):
  parts = []
  for piece in text.split(".")[:3]:
    digits = "".join(ch for ch in piece if ch.isdigit())
    parts.append(int(digits) if digits else 0)
  return tuple(parts + [0] * (3 - len(parts)))


def check_jax_version(installed: str) -> None:
  if parse_version(installed) < MIN_JAX:
    need = ".".join(map(str, MIN_JAX))
    raise ImportError(f"int4jax {__version__} needs jax >= {need}, but jax {installed} is "
                      f"installed: pip install -U 'jax>={need}'")
