"""emnist_jax: the EMNIST handwritten-character study, re-done in JAX, honestly and fast."""

__version__ = "0.1.0"
