import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every data test uses its own cache folder."""
    monkeypatch.setenv("BNNCL_CACHE", str(tmp_path_factory.mktemp("cache")))
