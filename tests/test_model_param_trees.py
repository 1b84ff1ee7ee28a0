"""The parameter trees of tiny UNet, VAE and DiT match a stored snapshot (paths and shapes).

`interop.import_reference` maps the reference's weights onto these names and checkpoints
store them, so a refactor of the model code must leave every path and shape as it is.
Regenerate `model_param_trees.json` only for a deliberate, documented format change:
`python tests/test_model_param_trees.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from madad_jax.models.dit import DiT
from madad_jax.models.unet import UNet
from madad_jax.models.vae import AutoencoderKL

SNAPSHOT = Path(__file__).with_name("model_param_trees.json")


def _tree(module, *args) -> dict[str, list[int]]:
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {"/".join(k.key for k in path): list(leaf.shape) for path, leaf in flat}


def param_trees() -> dict[str, dict[str, list[int]]]:
    z, t = jnp.ones((2, 8, 8, 4)), jnp.array([0, 7])
    unet = UNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(2,), num_heads=2)
    vae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                        resolution=16, embed_dim=3, z_channels=2)
    dit = dict(hidden_size=32, depth=2, num_heads=2, patch_size=2)
    return {
        "unet": _tree(unet, z, t),
        "vae": _tree(vae, jnp.ones((2, 16, 16, 1))),
        "dit_loop": _tree(DiT(**dit, scan_layers=False), z, t),
        "dit_scan": _tree(DiT(**dit, scan_layers=True), z, t),
    }


@pytest.mark.parametrize("model", ["unet", "vae", "dit_loop", "dit_scan"])
def test_param_tree_matches_snapshot(model):
    want = json.loads(SNAPSHOT.read_text())[model]
    got = param_trees()[model]
    assert sorted(got) == sorted(want)
    assert got == want


def _dump(trees: dict[str, dict[str, list[int]]]) -> str:
    """JSON with one `"path": shape` line per parameter."""
    models = []
    for name, tree in sorted(trees.items()):
        rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(tree.items()))
        models.append(f" {json.dumps(name)}: {{\n{rows}\n }}")
    return "{\n" + ",\n".join(models) + "\n}\n"


if __name__ == "__main__":
    SNAPSHOT.write_text(_dump(param_trees()))
