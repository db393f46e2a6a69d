"""The incoming folder's rules that need no model: names in the done/rejected folders."""

from __future__ import annotations

import pytest

from bnncl.service.inbox import free_name, numbered_name


@pytest.mark.parametrize("name", ["a.png", "a" * 251 + ".png", "b" * 255, "x." + "y" * 250, "\u00e9" * 125 + ".png",
                                  "a.tar.gz", "\u00e9" * 127 + "e"])
@pytest.mark.parametrize("limit", [255, 239])
def test_numbered_names_fit_the_limit_and_differ(name, limit):
    names = [numbered_name(name, n, limit) for n in range(0, 30)]
    assert all(len(n.encode()) <= limit for n in names)
    assert len(set(names)) == len(names)
    assert all(n.encode().decode() == n for n in names)  # never cut inside a character
    if len(name.encode()) <= limit:
        assert names[0] == name


def test_free_name_numbers_taken_names(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.1.png").write_bytes(b"")
    assert free_name(tmp_path, "a.png").name == "a.2.png"
    assert free_name(tmp_path, "b.png").name == "b.png"


def test_links_are_followed_only_when_asked(tmp_path):
    """INCOMING never follows links (test_bad_input); a read-only folder such as --base does."""
    from bnncl.service.inbox import scan

    (tmp_path / "data" / "Bag").mkdir(parents=True)
    (tmp_path / "data" / "Bag" / "a.png").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "Bag").symlink_to(tmp_path / "data" / "Bag", target_is_directory=True)
    skipped: list = []
    assert scan(root, skipped=skipped) == [] and "symbolic link" in skipped[0][1]
    assert [it.id for it in scan(root, follow=True)] == ["Bag/a.png"]
