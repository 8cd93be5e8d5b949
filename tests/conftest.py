"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A folder for the tiny runs' demo data, generated on first use and shared by every test module."""
    return tmp_path_factory.mktemp("demo-data")
