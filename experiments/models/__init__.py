"""Model definitions used by the experiment tasks (plain Flax: INT4 comes from rules)."""
