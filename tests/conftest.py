import jax

# Shapes must broadcast on purpose, never by accident.
jax.config.update("jax_numpy_rank_promotion", "raise")
