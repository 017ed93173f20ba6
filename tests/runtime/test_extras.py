"""Optional dependencies: a feature whose extra is missing fails with one line naming the extra."""

import importlib.util
import sys

import pytest

from graphreg.apps.cli import main
from graphreg.errors import GraphregError
from graphreg.runtime.extras import EXTRAS, MissingExtraError, missing_packages, require_extra


@pytest.fixture
def without_matplotlib(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))


def test_installed_extras_pass():
    for extra in EXTRAS:  # tools/setup.sh installs every extra
        assert missing_packages(extra) == []
        require_extra(extra, "a test")


def test_missing_extra_names_it(without_matplotlib):
    assert missing_packages("viz") == ["matplotlib"]
    with pytest.raises(MissingExtraError, match=r"graphreg viz needs matplotlib: pip install 'graphreg\[viz\]'"):
        require_extra("viz", "graphreg viz")


def test_cli_reports_the_missing_extra(without_matplotlib, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["graphreg", "viz", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert "pip install 'graphreg[viz]'" in capsys.readouterr().err


def test_exception():
    with pytest.raises(GraphregError, match="extra: expected one of"):
        missing_packages("nope")
