"""Speed benchmarks of int4_linear and the INT4 GEMM kernels; timer.py is their one timer."""
