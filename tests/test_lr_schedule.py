"""The reference's per-epoch LR schedule against the LR the authors' code used each epoch."""

import json

import numpy as np
import pytest
from conftest import FIXTURES, require_fixture

from madad_jax.config import default_config
from madad_jax.training import optimizer

SCHEDULES = FIXTURES / "train_step_mc32_img64" / "lr_schedule.json"


@pytest.fixture(scope="module")
def recorded():
    require_fixture(SCHEDULES)
    return json.loads(SCHEDULES.read_text())


def test_reference_epoch_lr_matches_every_recorded_epoch(recorded):
    assert len(recorded) >= 2
    for name, rec in recorded.items():
        want = np.asarray(rec["lr_during_epoch"], np.float64)
        assert len(want) == rec["epochs"], name
        got = np.asarray([optimizer.reference_epoch_lr(e, rec["lr"], rec["warmup_epochs"],
                                                       rec["epochs"])
                          for e in range(rec["epochs"])])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15, err_msg=name)
        assert got[0] == 0.0 and got[rec["warmup_epochs"]] == pytest.approx(rec["lr"])


def test_reference_schedule_is_constant_within_an_epoch(recorded):
    rec = recorded["epochs37_warmup3_lr0.0001"]
    c = default_config().train
    c.update(dict(lr=rec["lr"], num_epochs=float(rec["epochs"]),
                  warmup_epochs=float(rec["warmup_epochs"]), lr_schedule="reference"))
    spe = 7
    s = optimizer.lr_schedule(c, steps_per_epoch=spe)
    steps = np.arange(rec["epochs"] * spe)
    got = np.asarray([float(s(i)) for i in steps])
    want = np.repeat(np.asarray(rec["lr_during_epoch"]), spe)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-15)
    assert float(s(rec["epochs"] * spe + 100)) == pytest.approx(want[-1], rel=1e-6)


def test_reference_schedule_needs_steps_per_epoch_and_default_is_per_step():
    c = default_config().train
    assert c.lr_schedule == "per_step"
    c.update(dict(lr=1e-3, num_steps=110, warmup_steps=10, schedule="cosine"))
    assert float(optimizer.lr_schedule(c)(0)) == pytest.approx(1e-4)
    assert float(optimizer.lr_schedule(c, steps_per_epoch=5)(0)) == pytest.approx(1e-4)
    optimizer.make_optimizer(c)
    c.lr_schedule = "reference"
    with pytest.raises(ValueError, match="steps per epoch"):
        optimizer.make_optimizer(c)
    # No num_epochs: ceil(110 / 11) = 10 epochs, no warm-up.
    s = optimizer.lr_schedule(c, steps_per_epoch=11)
    assert float(s(10)) == pytest.approx(1e-3) and float(s(11)) < 1e-3
    assert float(s(11)) == pytest.approx(optimizer.reference_epoch_lr(1, 1e-3, 0, 10), rel=1e-6)
    optimizer.make_optimizer(c, steps_per_epoch=11)
    c.lr_schedule = "per_epoch"
    with pytest.raises(ValueError, match="lr_schedule"):
        optimizer.lr_schedule(c, steps_per_epoch=11)
