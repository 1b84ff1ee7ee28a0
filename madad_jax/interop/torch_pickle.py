"""Read PyTorch `.pt` checkpoints without torch and without running any pickled code.

A `.pt` file (torch >= 1.6) is a zip archive: `<name>/data.pkl` (a pickle whose tensors point
at storages by persistent id) and `<name>/data/<key>` (raw little-endian storage bytes).

The unpickler's `find_class` only hands out:
- tensor / parameter rebuild functions, reimplemented here with numpy (bounds-checked);
- storage types (a dtype tag) and torch dtype/device constants (inert);
- `collections.OrderedDict`, `set`, `frozenset` and plain containers;
- for pickled whole modules (the reference ships its VAE as a pickled `AutoencoderKL`):
  `torch.nn` modules, latent-diffusion / taming classes and `argparse.Namespace` become an
  inert record type that only ever stores its pickled `__dict__` state. Its constructor
  stores arguments; it never calls anything.

Everything else (`os.system`, `builtins.eval`, `subprocess.*`, any other callable that a
`__reduce__` trick could invoke) raises `UnsafePickleError` naming the file and the global.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from madad_jax.core.errors import InputError


class TorchPickleError(InputError):
    """The file is not a readable `.pt` checkpoint (corrupt, truncated, unsupported)."""


class UnsafePickleError(TorchPickleError):
    """The pickle asks for a global outside the allow-list; nothing was executed."""

    def __init__(self, path: str, module: str, name: str):
        self.path, self.module, self.name = path, module, name
        super().__init__(
            f"{path}: refused to unpickle global '{module}.{name}' "
            "(only tensors, storages and plain containers are allowed)")


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_CONSTANTS = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
    "int32", "int", "int16", "short", "int8", "uint8", "bool", "strided", "contiguous_format",
    "channels_last", "preserve_format",
}
# Modules whose classes (or function references) may appear in a pickled module tree. They
# are replaced by inert records, so nothing from these packages is imported or run.
_RECORD_PREFIXES = ("torch.nn.modules.", "ldm.", "taming.", "torchvision.models.", "lpips.",
                    "pytorch_lightning.", "lightning.")
_RECORD_EXACT = {("argparse", "Namespace"), ("torch", "device"), ("torch", "Size")}


class StorageType:
    """A storage class from the pickle (`torch.FloatStorage`), reduced to its dtype name."""

    def __init__(self, name: str):
        self.name = name


class TorchConstant:
    """An inert stand-in for `torch.float32`, `torch.strided`, ..."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class Record:
    """Inert stand-in for a pickled object: keeps constructor args and `__dict__` state only."""

    _qualname = "Record"

    def __init__(self, *args: Any, **kwargs: Any):
        self._record_args = args
        self._record_kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state, slots = state
            if isinstance(slots, dict):
                self.__dict__.update({str(k): v for k, v in slots.items()})
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        elif state is not None:
            self.__dict__["_record_state"] = state

    def __repr__(self) -> str:
        return f"<record {self._qualname}>"


class _Call:
    """A rebuild function handed to the pickle; immutable, so BUILD cannot tamper with it."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        object.__setattr__(self, "fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TorchPickleError("pickle tried to modify a rebuild function")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _is_identifier_path(s: str) -> bool:
    return all(p.isidentifier() and not p.startswith("__") for p in s.split("."))


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: str, read_storage):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._read_storage = read_storage
        self._record_types: dict[str, type] = {}  # per load: nothing leaks between files

    def find_class(self, module: str, name: str) -> Any:
        full = (module, name)
        if module == "torch._utils" or module == "torch._tensor":
            if name in _REBUILDERS:
                return _Call(_REBUILDERS[name])
        elif module == "torch":
            if name in _STORAGE_DTYPES:
                return StorageType(name)
            if name in _TORCH_CONSTANTS:
                return TorchConstant(name)
            if name == "Tensor":
                return _TensorType
        elif module == "torch.nn.parameter" and name == "Parameter":
            return _TensorType
        elif full == ("collections", "OrderedDict"):
            return OrderedDict
        elif module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if full in _RECORD_EXACT or (
            module.startswith(_RECORD_PREFIXES) and _is_identifier_path(module)
            and name.isidentifier() and not name.startswith("__")
        ):
            qualname = f"{module}.{name}"
            if qualname not in self._record_types:
                self._record_types[qualname] = type("Record", (Record,), {"_qualname": qualname})
            return self._record_types[qualname]
        raise UnsafePickleError(self._path, module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise TorchPickleError(f"{self._path}: unsupported storage type {storage_type!r:.80}")
        return self._read_storage(str(key), storage_type.name, numel)


class _TensorType:
    """Marker for `torch.Tensor` / `torch.nn.Parameter` as a rebuild target type."""


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise TorchPickleError("tensor without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise TorchPickleError(f"bad tensor geometry size={size} stride={stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise TorchPickleError(
            f"tensor of size {size} at offset {offset} overruns its storage ({storage.size})")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       *state: Any) -> Any:
    if not isinstance(data, np.ndarray):
        raise TorchPickleError("parameter without tensor data")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not (isinstance(func, _Call) and func.fn in (_rebuild_tensor_v2, _rebuild_parameter)
            and new_type is _TensorType):
        raise TorchPickleError("unsupported tensor subclass")
    return func(*args)


_REBUILDERS = {
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_from_type_v2": _rebuild_from_type_v2,
}
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "dict": dict, "list": list,
                  "tuple": tuple}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load(path: str) -> Any:
    """Unpickle a `.pt` zip archive with the restricted unpickler (tensors -> numpy)."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise TorchPickleError(
            f"{path}: not a PyTorch zip checkpoint (corrupt, truncated, or the legacy "
            f"pre-1.6 format) ({e})") from e
    with zf:
        pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise TorchPickleError(f"{path}: expected one data.pkl in the archive, "
                                   f"found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        names = set(zf.namelist())
        try:
            order = zf.read(prefix + "byteorder").decode().strip() \
                if prefix + "byteorder" in names else "little"
            cache: dict[str, np.ndarray] = {}

            def read_storage(key: str, type_name: str, numel: Any) -> np.ndarray:
                if key not in cache:
                    entry = f"{prefix}data/{key}"
                    if entry not in names:
                        raise TorchPickleError(f"{path}: missing storage {entry}")
                    dtype = _STORAGE_DTYPES[type_name]
                    raw = zf.read(entry)
                    base = np.uint16 if dtype == "bfloat16" else dtype
                    bdt = np.dtype(base).newbyteorder("<" if order == "little" else ">")
                    if len(raw) % bdt.itemsize:
                        raise TorchPickleError(f"{path}: storage {entry} has a partial element")
                    arr = np.frombuffer(raw, dtype=bdt).astype(bdt.newbyteorder("="))
                    if dtype == "bfloat16":
                        arr = _bf16_to_f32(arr)
                    if isinstance(numel, int) and numel != arr.size:
                        raise TorchPickleError(
                            f"{path}: storage {entry} holds {arr.size} elements, "
                            f"expected {numel}")
                    cache[key] = arr
                return cache[key]

            return _Unpickler(zf.read(pkl[0]), path, read_storage).load()
        except UnsafePickleError:
            raise
        except TorchPickleError as e:
            msg = str(e)
            raise TorchPickleError(msg if msg.startswith(path) else f"{path}: {msg}") from e
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError,
                TypeError, KeyError, AttributeError, IndexError, RecursionError,
                MemoryError) as e:
            raise TorchPickleError(f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: "
                                   f"{e})") from e


def module_state_dict(obj: Record, prefix: str = "") -> dict[str, np.ndarray]:
    """The state_dict of a pickled `nn.Module` record: its parameters and persistent buffers."""
    d = obj.__dict__
    out: dict[str, np.ndarray] = {}
    skip = d.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (d.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, np.ndarray):
                raise TorchPickleError(f"{prefix}{name} is not a tensor")
            out[prefix + str(name)] = value
    for name, child in (d.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise TorchPickleError(f"{prefix}{name} is not a module")
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _is_module(obj: Any) -> bool:
    return isinstance(obj, Record) and "_modules" in obj.__dict__


def _is_flat_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def to_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """A flat state_dict from what a `.pt` holds: a state_dict, `{'model': ...}`,
    `{'state_dict': ...}` (Lightning) or a whole pickled module."""
    if _is_module(obj):
        return module_state_dict(obj)
    if _is_flat_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "ema"):
            if key in obj and (_is_module(obj[key]) or _is_flat_state_dict(obj[key])):
                return to_state_dict(obj[key])
    raise TorchPickleError(
        "holds neither a state_dict, a {'model': state_dict} checkpoint nor a pickled module")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """`load(path)` reduced to a flat `{name: np.ndarray}` state_dict."""
    obj = load(path)
    try:
        return to_state_dict(obj)
    except TorchPickleError as e:
        raise TorchPickleError(f"{path}: {e}") from e
