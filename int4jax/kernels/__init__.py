"""Integer GEMM kernels, each beside its pure-jnp reference. Shipped as `int4jax.kernels`."""
