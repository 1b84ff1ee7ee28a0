"""The `data_iter` item: why the project keeps its own handler beside grain's.

Each test shows one thing that grain's `grain.checkpoint.CheckpointHandler` would change:
existing checkpoints would not resume, a process-count mismatch would not say why, and a
restore would need the iterator object (see madad_jax/core/iterator_state.py).
"""

from __future__ import annotations

import grain
import grain.checkpoint as grain_ckpt
import orbax.checkpoint as ocp
import pytest

from madad_jax.core import iterator_state as its


def _iterator(advance: int = 0):
    it = iter(grain.MapDataset.range(50).to_iter_dataset())
    for _ in range(advance):
        next(it)
    return it


def _save_ours(directory, state) -> None:
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False)) as mngr:
        mngr.save(1, args=ocp.args.Composite(
            data_iter=its.IteratorStateSave(its.encode_iterator_state(state))))


def _restore(directory, arg):
    with ocp.CheckpointManager(directory) as mngr:
        return mngr.restore(1, args=ocp.args.Composite(data_iter=arg))["data_iter"]


@pytest.mark.parametrize("state", [{"next_index": 3}, b'{"workers": [1, 2]}'])
def test_both_kinds_of_state_round_trip(state):
    """A dataset iterator's dict and a DataLoader's bytes come back unchanged."""
    assert its.decode_iterator_state(its.encode_iterator_state(state)) == state


def test_existing_checkpoints_do_not_resume_with_grains_handler(tmp_path):
    """Every checkpoint written so far holds the envelope; ours reads it back, grain's handler
    passes the envelope to `set_state`, which refuses it."""
    it = _iterator(advance=3)
    _save_ours(tmp_path / "ckpt", it.get_state())
    text = _restore(tmp_path / "ckpt", its.IteratorStateRestore())
    fresh = _iterator()
    fresh.set_state(its.decode_iterator_state(text))
    assert next(fresh) == 3
    with pytest.raises((KeyError, TypeError)):  # grain 0.2: KeyError 'next_index'
        _restore(tmp_path / "ckpt", grain_ckpt.CheckpointRestore(_iterator()))


def test_another_process_count_names_its_cause(tmp_path, monkeypatch):
    """Ours names the files found and the remedy; grain's says only that a file is missing."""
    _save_ours(tmp_path / "ckpt", {"next_index": 1})
    monkeypatch.setattr(its, "iter_file", lambda: "process_0-of-2.json")
    with pytest.raises(ValueError, match="resume with the same number of processes") as ours:
        _restore(tmp_path / "ckpt", its.IteratorStateRestore())
    assert "process_0-of-1.json" in str(ours.value)


def test_our_restore_needs_no_iterator(tmp_path):
    """The state comes back as text, before any data pipeline exists; grain's restore needs
    the iterator object itself (its `item`) and starts its prefetch."""
    _save_ours(tmp_path / "ckpt", {"next_index": 2})
    assert its.decode_iterator_state(_restore(tmp_path / "ckpt",
                                              its.IteratorStateRestore())) == {"next_index": 2}
    with pytest.raises(TypeError):
        grain_ckpt.CheckpointRestore()  # its `item` is required
