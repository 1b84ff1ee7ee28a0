"""`python -m madad_jax.export_reference`: the reference's weights out and back, and refusals."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import import_case
from safetensors.numpy import load_file

from madad_jax.core import checkpoint
from madad_jax.interop import export_reference, import_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _same_bits(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


@pytest.fixture(scope="module")
def imported(case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ckpt"
    import_case(case_dir, out, vae="vae_official.pt")
    return out


def _export(capsys, *args):
    code = export_reference.main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_export_reproduces_reference_weights_and_reimports(case_dir, imported, tmp_path):
    out = tmp_path / "ref"
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "madad_jax.export_reference",
                          f"--checkpoint={imported}", f"--out={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == ["arch.json", "unet.safetensors", "vae.safetensors"]
    _same_bits(load_file(out / "unet.safetensors"), load_file(case_dir / "unet.safetensors"))
    _same_bits(load_file(out / "vae.safetensors"), load_file(case_dir / "vae.safetensors"))
    arch = json.loads((out / "arch.json").read_text())
    case = json.loads((case_dir / "case.json").read_text())
    for k in ("model_channels", "num_res_blocks", "attention_resolutions", "channel_mult",
              "num_heads", "in_channels", "out_channels"):
        assert arch["unet"][k] == case["unet"][k], k
    assert arch["vae"] == {k: case["vae"][k] for k in arch["vae"]}
    assert arch["image_size"] == case["image_size"]
    assert arch["latent_scale"] == case["latent_scale"]
    # Importing the export gives back the checkpoint, array for array.
    again = tmp_path / "again"
    assert import_reference.main([f"--arch={out / 'arch.json'}",
                                  f"--unet={out / 'unet.safetensors'}",
                                  f"--vae={out / 'vae.safetensors'}", f"--out={again}"]) == 0
    p0, a0 = checkpoint.load_params(str(imported))
    p1, a1 = checkpoint.load_params(str(again))
    _same_bits(_flat(p1), _flat(p0))
    assert a1 == a0


def test_export_refuses_whitening_unless_allowed(imported, tmp_path, capsys):
    params, arch = checkpoint.load_params(str(imported))
    c = arch["vae"]["embed_dim"]
    white = dict(shift=[0.1] * c, matrix=np.eye(c).tolist())
    ckpt = tmp_path / "white"
    checkpoint.save_params(str(ckpt), params, dict(arch, latent_whitening=white))
    out = tmp_path / "out"
    code, _, err = _export(capsys, f"--checkpoint={ckpt}", f"--out={out}")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and "whiten" in lines[0] and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    code, stdout, _ = _export(capsys, f"--checkpoint={ckpt}", f"--out={out}",
                              "--allow-whitening")
    assert code == 0 and export_reference.WHITENING_FILE in stdout
    w = load_file(out / export_reference.WHITENING_FILE)
    np.testing.assert_array_equal(w["shift"], white["shift"])
    np.testing.assert_array_equal(w["matrix"], white["matrix"])


def test_export_refuses_dit_and_existing_output(imported, tmp_path, capsys):
    params, arch = checkpoint.load_params(str(imported))
    ckpt = tmp_path / "dit"
    checkpoint.save_params(str(ckpt), params, dict(arch, model=dict(arch["model"], name="dit")))
    code, _, err = _export(capsys, f"--checkpoint={ckpt}", f"--out={tmp_path / 'o1'}")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "dit" in err.lower()
    assert not (tmp_path / "o1").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    code, _, err = _export(capsys, f"--checkpoint={imported}", f"--out={busy}")
    assert code != 0 and "not an empty directory" in err and os.listdir(busy) == ["x"]
    code, _, err = _export(capsys, f"--checkpoint={tmp_path / 'none'}", f"--out={tmp_path / 'o2'}")
    assert code != 0 and len(err.strip().splitlines()) == 1
