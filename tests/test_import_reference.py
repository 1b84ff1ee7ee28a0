"""`python -m madad_jax.import_reference`: the reference's weight files, and bad input."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from madad_jax.config import default_config
from madad_jax.core import checkpoint
from madad_jax.interop import import_reference, torch_pickle
from madad_jax.models import build_denoiser, build_vae
from madad_jax.models.arch import apply_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "madad_jax.import_reference", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _main(capsys, *args):
    code = import_reference.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line_naming(err, path):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "Traceback" not in err
    return lines[0]


def _rewrite_zip(src, dst, edit):
    """Copy a `.pt` zip, passing each (name, bytes) through `edit`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_pt_files_read_without_torch_equal_safetensors(case_dir):
    assert "torch" not in sys.modules
    pairs = (("unet_official.pt", "unet.safetensors"), ("vae_official.pt", "vae.safetensors"))
    for pt, st in pairs:
        sd = import_reference.load_state_dict(str(case_dir / pt))
        ref = load_file(case_dir / st)
        assert sorted(sd) == sorted(ref)
        for k, v in ref.items():
            assert sd[k].dtype == v.dtype and np.array_equal(sd[k], v), k
    assert "torch" not in sys.modules


def test_cli_imports_both_formats_identically_and_checkpoints_reload(case_dir, tmp_path):
    arch = case_dir / "case.json"
    out_st, out_pt = tmp_path / "st", tmp_path / "pt"
    r = _cli(f"--arch={arch}", f"--unet={case_dir / 'unet.safetensors'}",
             f"--vae={case_dir / 'vae.safetensors'}", f"--out={out_st}")
    assert r.returncode == 0, r.stderr
    r = _cli(f"--arch={arch}", f"--unet={case_dir / 'unet_official.pt'}",
             f"--vae={case_dir / 'vae_official.pt'}", f"--out={out_pt}")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["pt", "st"]  # no temporary directory left behind

    p_st, arch_st = checkpoint.load_params(str(out_st))
    p_pt, arch_pt = checkpoint.load_params(str(out_pt))
    assert arch_st == arch_pt
    a, b = _flat(p_st), _flat(p_pt)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

    # The stored arch rebuilds exactly these shapes through the shared config.
    config = default_config()
    apply_arch(config, arch_pt)
    assert config.image_size == 64 and config.model.unet.model_channels == 32
    assert config.model.unet.dropout == 0.4 and config.vae.num_res_blocks == 1
    s = config.image_size // 2 ** (len(config.vae.ch_mult) - 1)
    z, t = np.zeros((1, s, s, 4), np.float32), np.zeros((1,), np.int32)
    den = jax.eval_shape(build_denoiser(config).init, jax.random.key(0), z, t)["params"]
    x = np.zeros((1, config.image_size, config.image_size, 1), np.float32)
    vae = jax.eval_shape(build_vae(config).init, jax.random.key(0), x)["params"]
    leaves = jax.tree_util.tree_leaves_with_path({"denoiser": den, "vae": vae})
    shapes = {jax.tree_util.keystr(k): v.shape for k, v in leaves}
    assert shapes == {k: v.shape for k, v in b.items()}

    # And the weights are the reference's, laid out for JAX.
    ref = load_file(case_dir / "unet.safetensors")
    np.testing.assert_array_equal(
        p_pt["denoiser"]["input_blocks_4_0"]["in_layers_2"]["kernel"],
        ref["input_blocks.4.0.in_layers.2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p_pt["denoiser"]["middle_block_1"]["qkv"]["kernel"],
                                  ref["middle_block.1.qkv.weight"][:, :, 0].T)


def test_training_checkpoint_with_args_namespace(case_dir, tmp_path, capsys):
    """The reference's `last.pt` is `{'model': state_dict, 'args': argparse.Namespace}`."""

    def add_args(name, data):
        if not name.endswith("data.pkl"):
            return data
        assert data.endswith(pickle.STOP)  # the top-level dict is on the stack here
        extra = (pickle.BINUNICODE + (4).to_bytes(4, "little") + b"args"
                 + pickle.GLOBAL + b"argparse\nNamespace\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                 + pickle.EMPTY_DICT + pickle.MARK
                 + pickle.BINUNICODE + (5).to_bytes(4, "little") + b"model"
                 + pickle.BINUNICODE + (7).to_bytes(4, "little") + b"UNet_XS"
                 + pickle.SETITEMS + pickle.BUILD + pickle.SETITEM)
        return data[:-1] + extra + pickle.STOP

    pt = tmp_path / "last.pt"
    _rewrite_zip(case_dir / "unet_official.pt", pt, add_args)
    obj = torch_pickle.load(str(pt))
    assert obj["args"].__dict__["model"] == "UNet_XS"
    sd = import_reference.load_state_dict(str(pt))
    assert len(sd) == len(load_file(case_dir / "unet.safetensors"))
    code, err = _main(capsys, f"--arch={case_dir / 'case.json'}", f"--unet={pt}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={tmp_path / 'ck'}")
    assert code == 0, err


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _evil_pt(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        z.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("kind", ["os.system", "eval", "nested"])
def test_malicious_pickle_is_refused_and_nothing_runs(case_dir, tmp_path, capsys, kind):
    sentinel = tmp_path / "pwned"
    cmd = f"touch {sentinel}"
    payload = {
        "os.system": _Evil(os.system, cmd),
        "eval": _Evil(eval, f"__import__('os').system({cmd!r})"),
        "nested": {"model": {"w": _Evil(os.system, cmd)}},
    }[kind]
    pt = tmp_path / "evil.pt"
    _evil_pt(pt, payload)
    out = tmp_path / "ck"
    code, err = _main(capsys, f"--arch={case_dir / 'case.json'}", f"--unet={pt}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={out}")
    assert code != 0
    line = _one_line_naming(err, pt)
    assert "refused" in line and ("system" in line or "eval" in line)
    assert not sentinel.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pt"]
    with pytest.raises(torch_pickle.UnsafePickleError):
        torch_pickle.load(str(pt))
    assert not sentinel.exists()


def test_malicious_pickle_refused_through_the_real_command(case_dir, tmp_path):
    sentinel = tmp_path / "pwned"
    pt = tmp_path / "evil_vae.pt"
    _evil_pt(pt, _Evil(os.system, f"touch {sentinel}"))
    r = _cli(f"--arch={case_dir / 'case.json'}", f"--unet={case_dir / 'unet.safetensors'}",
             f"--vae={pt}", f"--out={tmp_path / 'ck'}")
    assert r.returncode == 1
    _one_line_naming(r.stderr, pt)
    assert not sentinel.exists() and not (tmp_path / "ck").exists()
    assert sorted(os.listdir(tmp_path)) == ["evil_vae.pt"]


@pytest.mark.parametrize("module,name", [("torch", "load"), ("torch._utils", "_rebuild_qtensor"),
                                         ("subprocess", "Popen"), ("builtins", "getattr"),
                                         ("ldm.models", "__init__")])
def test_only_allow_listed_globals(tmp_path, module, name):
    pt = tmp_path / "g.pt"
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("a/data.pkl", pickle.PROTO + b"\x02" + pickle.GLOBAL
                   + f"{module}\n{name}\n".encode() + pickle.STOP)
    with pytest.raises(torch_pickle.UnsafePickleError, match=f"{module}.{name}"):
        torch_pickle.load(str(pt))


def test_truncated_and_corrupt_files(case_dir, tmp_path, capsys):
    src = (case_dir / "unet_official.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(src[: len(src) // 2])

    short_storage = tmp_path / "short_storage.pt"
    _rewrite_zip(case_dir / "unet_official.pt", short_storage,
                 lambda n, d: d[: len(d) // 2] if n.endswith("/data/3") else d)
    bad_pickle = tmp_path / "bad_pickle.pt"
    _rewrite_zip(case_dir / "unet_official.pt", bad_pickle,
                 lambda n, d: d[: len(d) // 3] if n.endswith("data.pkl") else d)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)

    for bad in (truncated, short_storage, bad_pickle, garbage):
        out = tmp_path / f"ck_{bad.stem}"
        code, err = _main(capsys, f"--arch={case_dir / 'case.json'}", f"--unet={bad}",
                          f"--vae={case_dir / 'vae.safetensors'}", f"--out={out}")
        assert code == 1, bad
        _one_line_naming(err, bad)
        assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".ck", "ck"))]


def test_missing_file_and_usage_errors(case_dir, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    code, err = _main(capsys, f"--arch={case_dir / 'case.json'}", f"--unet={missing}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={tmp_path / 'ck'}")
    assert code == 1 and "no such file" in _one_line_naming(err, missing)
    code, err = _main(capsys, f"--arch={tmp_path / 'arch.json'}",
                      f"--unet={case_dir / 'unet.safetensors'}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={tmp_path / 'ck'}")
    assert code == 1 and "arch.json" in err
    code, err = _main(capsys, "--unet=x.pt", "--vae=y.pt")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ck").exists()


def test_shape_mismatch_between_arch_and_weights(case_dir, tmp_path, capsys):
    ref = json.loads((case_dir / "case.json").read_text())
    ref["unet"]["model_channels"] = 64
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(ref))
    unet = case_dir / "unet.safetensors"
    code, err = _main(capsys, f"--arch={arch}", f"--unet={unet}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={tmp_path / 'ck'}")
    assert code == 1 and "shape" in _one_line_naming(err, unet)

    ref = json.loads((case_dir / "case.json").read_text())
    ref["vae"]["num_res_blocks"] = 2  # one block more per level: missing weights
    arch.write_text(json.dumps(ref))
    vae = case_dir / "vae_official.pt"
    code, err = _main(capsys, f"--arch={arch}", f"--unet={unet}", f"--vae={vae}",
                      f"--out={tmp_path / 'ck'}")
    assert code == 1 and "missing weights" in _one_line_naming(err, vae)

    # The preset's sizes (UNet_XS, medical VAE) do not fit these small weights either.
    code, err = _main(capsys, "--unet-preset=UNet_XS", f"--unet={unet}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={tmp_path / 'ck'}")
    assert code == 1 and "shape" in _one_line_naming(err, unet)
    assert sorted(os.listdir(tmp_path)) == ["arch.json"]


def test_preset_arch_matches_reference_presets():
    for preset, (mc, heads) in {"UNet_XS": (64, 4), "UNet_L": (256, 8)}.items():
        arch = import_reference.arch_from_reference(import_reference.preset_reference(preset))
        u = arch["model"]["unet"]
        assert (u["model_channels"], u["num_heads"]) == (mc, heads)
        assert u["attention_resolutions"] == [4, 2, 1] and u["channel_mult"] == [1, 2, 4]
        assert arch["image_size"] == 256 and arch["vae"]["ch"] == 128
        assert arch["vae"]["ch_mult"] == [1, 2, 4, 4] and arch["latent_scale"] == 0.18215


def test_existing_output_is_not_overwritten(case_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _main(capsys, f"--arch={case_dir / 'case.json'}",
                      f"--unet={case_dir / 'unet.safetensors'}",
                      f"--vae={case_dir / 'vae.safetensors'}", f"--out={out}")
    assert code == 1 and str(out) in err
    assert os.listdir(out) == ["keep.txt"]
    shutil.rmtree(out)
