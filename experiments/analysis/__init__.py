"""Accuracy analyses of the INT4 quantizers: layer errors, outlier channels, LSS variance."""
