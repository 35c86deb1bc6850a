"""nvfp4-bench: benchmarking and regression tracking for NVFP4 inference."""

__version__ = "0.1.0"
