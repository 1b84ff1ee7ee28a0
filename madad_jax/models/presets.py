"""Model presets: the reference's autoencoder and UNet sizes, and the DiT sizes.

Each function returns the `ConfigDict` that `config.vae`, `config.model.unet` or
`config.model.dit` holds (see `madad_jax.config.default_config`).
"""

from __future__ import annotations

import ml_collections

# The reference's UNet presets: (model_channels, num_heads).
UNET_PRESETS = {
    "UNet_XS": (64, 4),
    "UNet_S": (128, 4),
    "UNet_M": (192, 6),
    "UNet_L": (256, 8),
    "UNet_XL": (320, 12),
}

# DiT presets: (hidden_size, depth, num_heads), as in Peebles & Xie.
DIT_PRESETS = {
    "DiT_S": (384, 12, 6),
    "DiT_B": (768, 12, 12),
    "DiT_L": (1024, 24, 16),
    "DiT_XL": (1152, 28, 16),
}


def medical_vae() -> ml_collections.ConfigDict:
    """The reference's KL-f8 medical autoencoder (ddconfig + embed_dim), 256x256."""
    return ml_collections.ConfigDict(
        dict(
            ch=128,
            ch_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            attn_resolutions=(),
            z_channels=4,
            double_z=True,
            in_channels=1,
            out_ch=1,
            resolution=256,
            dropout=0.0,
            embed_dim=4,
        )
    )


def unet(preset: str = "UNet_L") -> ml_collections.ConfigDict:
    """The reference's UNetModel keyword arguments for a preset."""
    mc, heads = UNET_PRESETS[preset]
    return ml_collections.ConfigDict(
        dict(
            model_channels=mc,
            num_res_blocks=2,
            attention_resolutions=(4, 2, 1),
            channel_mult=(1, 2, 4),
            num_heads=heads,
            in_channels=4,
            out_channels=4,
            dropout=0.4,
        )
    )


def dit(preset: str = "DiT_B", patch_size: int = 2) -> ml_collections.ConfigDict:
    """The `DiT` keyword arguments for a preset."""
    hidden, depth, heads = DIT_PRESETS[preset]
    return ml_collections.ConfigDict(
        dict(
            hidden_size=hidden,
            depth=depth,
            num_heads=heads,
            patch_size=patch_size,
            mlp_ratio=4.0,
            in_channels=4,
            out_channels=4,
            dropout=0.0,
            scan_layers=True,
            remat=False,
        )
    )
