"""Training: the generic resumable loop, the denoiser and autoencoder tasks, and `mode=train`."""
