"""The patch discriminator of the autoencoder's adversarial loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from madad_jax.models.layers import GroupNorm


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN (4x4 convs, LeakyReLU 0.2), GroupNorm instead of BatchNorm."""

    ch: int = 64
    n_layers: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(h, feats, stride):
            return nn.Conv(feats, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)))(h)

        h = nn.leaky_relu(conv(x, self.ch, 2), 0.2)
        for i in range(1, self.n_layers + 1):
            feats = self.ch * min(2**i, 8)
            h = conv(h, feats, 2 if i < self.n_layers else 1)
            h = nn.leaky_relu(GroupNorm(epsilon=1e-5)(h), 0.2)
        return conv(h, 1, 1)
