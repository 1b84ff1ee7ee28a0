"""The evaluation plug-ins: which run for a config's `evaluate.protocols`, and in what order."""

from madad_jax.config import default_config
from madad_jax.evaluation import protocols


def test_default_names_every_plugin_but_volume_in_order():
    names = protocols.resolve(default_config().evaluate.protocols)
    assert names == tuple(n for n in protocols.ORDER if n != "volume")


def test_the_old_spelling_keeps_its_meaning():
    # ("slice",) and ("slice", "volume") were the whole list before the plug-ins.
    assert protocols.resolve(("slice",)) == protocols.resolve(
        default_config().evaluate.protocols)
    assert protocols.resolve(("volume", "slice")) == protocols.ORDER


def test_an_explicit_list_runs_only_its_plugins_in_order():
    assert protocols.resolve(("report", "baseline", "slice")) == ("slice", "baseline", "report")


def test_every_plugin_has_one_entry_point():
    for name in protocols.ORDER:
        assert callable(protocols.entry(name))
