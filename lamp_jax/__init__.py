"""lamp_jax: robot policies that learn from motion (LaMP and latent-action methods) in JAX/Flax."""

__version__ = "0.1.0"
