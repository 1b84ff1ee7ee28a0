"""Under CI=true a missing fixture fails its test; elsewhere it is skipped with its reason."""

from pathlib import Path

import pytest
from conftest import on_ci, require_fixture


def test_a_missing_fixture_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert on_ci()
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_fixture(tmp_path / "absent")


def test_a_missing_fixture_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found at"):
        require_fixture(tmp_path / "absent")


def test_a_present_fixture_runs(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require_fixture(Path(__file__))


def test_ci_run_fails_on_missing_fixtures_and_shows_skips():
    text = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in text
    assert "python -m pytest -q -rs" in text
