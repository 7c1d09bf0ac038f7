"""Pure functional quantizers: each a function of (array, settings, key) that jits, vmaps, grads."""

from int4jax.quantizers.bitsplit import BitSplit, bit_split, combined_max, radix
from int4jax.quantizers.hadamard import (block_hadamard, hadamard_matrix, is_power_of_two,
                                         pad_to_block, padded_size)
from int4jax.quantizers.packing import pack_int4, unpack_int4
from int4jax.quantizers.int4_quant import (FULL, SYMMETRIC, absmax_scale, dequantize, int_range,
                                         lsq_fake_quant, lsq_grad_scale, lsq_init_scale,
                                         nonfinite_to_nan, quantize, quantize_absmax,
                                         round_half_even, stochastic_round)
from int4jax.quantizers.sampling import (bernoulli_weights, leverage_probabilities,
                                         nonzero_weights, systematic_indices)
from int4jax.quantizers.block_search import (block_errors, candidate_blocks,
                                             search_hadamard_block)
from int4jax.quantizers.two_level import (dequantize_two_level, fits_int8, max_operand,
                                          quantize_two_level)
