"""The VictoriaMetrics peer of the tests: missing, it skips a test outside CI and fails it in CI (where
make system-deps installs it)."""

from __future__ import annotations

import shutil

import pytest

from tests.attribution import victoria


def test_a_missing_binary_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make system-deps"):
        victoria.binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="make system-deps"):
        victoria.binary()
