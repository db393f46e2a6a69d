"""Benchmarks (measured figures, never timed tests): ``bnncl bench kernels`` and friends."""
