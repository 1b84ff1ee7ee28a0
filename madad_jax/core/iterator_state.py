"""The data iterator's position in a training checkpoint: the `data_iter` item.

The training loop takes the state itself (`batches.get_state()`) and hands this handler JSON
text, written one file per process (`process_I-of-N.json`). grain's own handler
(`grain.checkpoint.CheckpointHandler`) would take the iterator object instead; this one is
kept because (tests/test_iterator_state.py shows each):
- every existing checkpoint holds the envelope `{"json": state}` or `{"bytes_b64": ...}`,
  which grain's handler would hand to `set_state` as it is, so those runs could not resume;
- a resume with another process count names its cause and its remedy, where grain's says
  only that a file does not exist;
- restoring returns the state without an iterator object, so the training state and the
  iterator's position are read in one restore, before the loop touches its data.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from madad_jax.core.errors import InputError


class IteratorStateHandler(ocp.CheckpointHandler):
    """Saves a data iterator state captured by the caller (JSON text), one file per process."""

    def save(self, directory, args: IteratorStateSave):
        directory.joinpath(iter_file()).write_text(args.state)

    def restore(self, directory, args: IteratorStateRestore | None = None) -> str:
        path = directory / iter_file()
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise InputError(
                f"{path}: no data iterator state for this process (found {found}); resume "
                "with the same number of processes that wrote the checkpoint"
            )
        return path.read_text()

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


def iter_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: str


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


def encode_iterator_state(state: Any) -> str:
    """JSON text for a grain iterator state (a dict for datasets, bytes for DataLoader)."""
    if isinstance(state, bytes):
        return json.dumps({"bytes_b64": base64.b64encode(state).decode("ascii")})
    return json.dumps({"json": state})


def decode_iterator_state(text: str) -> Any:
    obj = json.loads(text)
    if "bytes_b64" in obj:
        return base64.b64decode(obj["bytes_b64"])
    return obj["json"]
