"""Device runtime: NumPy + a small C core. Never imports torch."""
