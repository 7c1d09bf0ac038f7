import os

import jax

# Shapes must broadcast on purpose, never by accident.
jax.config.update("jax_numpy_rank_promotion", "raise")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
