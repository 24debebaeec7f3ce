"""Fixtures of the conditioning video encoders' tests; their shared checks are in :mod:`tests.encoders.common`."""

from __future__ import annotations

import pytest

# the shared checks are plain functions: rewrite their asserts so a failure shows the values, as in a test module
pytest.register_assert_rewrite("tests.encoders.common")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder for a module's tiny twins (``tiny:<name>`` sources), written once per module."""
    return tmp_path_factory.mktemp("tiny")
