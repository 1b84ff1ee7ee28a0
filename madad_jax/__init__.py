"""madad-jax: MAD-AD (masked latent diffusion for brain anomaly detection) in JAX/Flax."""

__version__ = "0.1.0"
