"""Fixtures of the libbnncl CWR* tests."""

from __future__ import annotations

import shutil

import pytest

from libbnncl_cwr_lib import build


@pytest.fixture(scope="module")
def cwr_lib(tmp_path_factory):
    """libbnncl (core + glue) built as a shared object with its CWR* entry points typed (ctypes)."""
    if shutil.which("gcc") is None:
        pytest.skip("libbnncl is built with gcc; not found")
    return build(tmp_path_factory.mktemp("libbnncl_cwr"))
