"""CORe50 loader and the core50-* protocols on a tiny fixture written at test time."""

import numpy as np
import pytest
from PIL import Image

from bnncl.data.core50 import (
    CATEGORIES,
    OBJECT_CLASSES,
    TEST_SESSIONS,
    TRAIN_SESSIONS,
    core50_index,
    core50_sessions,
    find_core50,
    load_core50,
)
from bnncl.data.protocols import get_protocol
from bnncl.data.registry import load_dataset
from bnncl.data.scenarios import domain_stream, nc_stream, unit_nic_stream
from bnncl.errors import BnnclError, DataError

N_OBJECTS, FRAMES = 12, 2


def colour(obj, session, frame):
    return (10 * obj, 20 * session, 100 * frame)


@pytest.fixture(scope="module")
def core50_root(tmp_path_factory):
    """``ROOT/core50_128x128/s1..s11/o1..o12/C_SS_OO_FFF.png``: flat 128x128 RGB images whose colour
    encodes (object, session, frame)."""
    root = tmp_path_factory.mktemp("core50")
    for s in range(1, 12):
        for o in range(1, N_OBJECTS + 1):
            folder = root / "core50_128x128" / f"s{s}" / f"o{o}"
            folder.mkdir(parents=True)
            for f in range(FRAMES):
                Image.new("RGB", (128, 128), colour(o, s, f)).save(folder / f"C_{s:02d}_{o:02d}_{f:03d}.png")
    return root / "core50_128x128"


@pytest.fixture
def core50_env(core50_root, monkeypatch):
    monkeypatch.setenv("BNNCL_CORE50", str(core50_root))
    return core50_root


def test_find_and_missing(core50_root, tmp_path, monkeypatch):
    assert find_core50(core50_root) == core50_root
    assert find_core50(core50_root.parent) == core50_root  # the folder holding core50_128x128
    monkeypatch.delenv("BNNCL_CORE50", raising=False)
    for root, where in ((None, "BNNCL_CORE50 is not set"), (tmp_path / "nope", "no such folder"),
                        (tmp_path, "no s1..s11")):
        with pytest.raises(DataError) as info:
            find_core50(root)
        msg = str(info.value)
        assert "\n" not in msg and where in msg and "https://vlomonaco.github.io/core50/" in msg
    monkeypatch.setenv("BNNCL_CORE50", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="BNNCL_CORE50=.*gone: no such folder"):
        load_dataset("core50", "train")
    with pytest.raises(DataError, match="split"):
        core50_index(core50_root, "val")


def test_loader_geometry_labels_and_sessions(core50_root):
    train = load_core50(core50_root, "train")
    sessions = core50_sessions(core50_root, "train")
    assert train.images.shape == (len(TRAIN_SESSIONS) * N_OBJECTS * FRAMES, 32, 32, 3)
    assert train.class_names == OBJECT_CLASSES and len(OBJECT_CLASSES) == 50
    assert OBJECT_CLASSES[0] == "plug_adapter1" and OBJECT_CLASSES[49] == "remote_control5"
    assert sorted(set(sessions.tolist())) == list(TRAIN_SESSIONS) and len(sessions) == len(train)
    assert sorted(set(train.labels.tolist())) == list(range(N_OBJECTS))
    index = core50_index(core50_root, "train")
    for i in (0, 5, len(train) - 1):  # the pixels, the label and the session of a row agree with its file
        frame = int(index.paths[i].stem.split("_")[-1])
        np.testing.assert_array_equal(train.images[i, 16, 16], colour(train.labels[i] + 1, sessions[i], frame))
        assert index.paths[i].parent.name == f"o{train.labels[i] + 1}"
    test = load_core50(core50_root, "test")
    assert sorted(set(core50_sessions(core50_root, "test").tolist())) == list(TEST_SESSIONS)
    assert len(test) == len(TEST_SESSIONS) * N_OBJECTS * FRAMES
    assert len(load_core50(core50_root, "all")) == 11 * N_OBJECTS * FRAMES


def test_loader_other_geometry_categories_and_specs(core50_env):
    gray = load_dataset("core50@28x28x1", "test")
    assert gray.image_shape == (28, 28, 1)
    big = load_core50(None, "test", "64x64x3")
    assert big.image_shape == (64, 64, 3)
    cats = load_dataset(f"core50-cat:{core50_env}", "train")
    assert cats.class_names == CATEGORIES and len(CATEGORIES) == 10
    objects = load_dataset("core50", "train")
    np.testing.assert_array_equal(cats.labels, objects.labels // 5)
    assert cats.labels.max() == (N_OBJECTS - 1) // 5
    again = load_dataset("core50", "train")  # from the cache
    assert again.images.tobytes() == objects.images.tobytes()


def test_bad_object_folder(tmp_path):
    (tmp_path / "s1" / "o51").mkdir(parents=True)
    with pytest.raises(DataError, match="o1..o50"):
        core50_index(tmp_path, "all")
    with pytest.raises(DataError, match="no PNG images in the test sessions"):
        core50_index(tmp_path, "test")


def _stream(name, seed=0):
    p = get_protocol(name)
    assert p.fresh_head and not p.pretrained_base and not p.takes_shots and p.model == "cifar10-b5"
    train, test = p.load()
    assert train.image_shape == (32, 32, 3) and test.image_shape == (32, 32, 3)
    return train, p.stream(train.labels, seed)


def _sessions_of(exp):
    return set(core50_sessions(None, "train")[exp.indices].tolist())


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b))


def test_core50_ni(core50_env):
    train, s = _stream("core50-ni")
    assert len(s) == len(TRAIN_SESSIONS)
    seen = []
    for e in s:
        (session,) = _sessions_of(e)
        seen.append(session)
        assert e.classes_in_experience == tuple(range(N_OBJECTS)) and len(e) == N_OBJECTS * FRAMES
    assert sorted(seen) == list(TRAIN_SESSIONS) and not set(seen) & set(TEST_SESSIONS)
    assert _same(s, get_protocol("core50-ni").stream(train.labels, 0))
    assert not _same(s, get_protocol("core50-ni").stream(train.labels, 1))


def test_core50_nc(core50_env):
    train, s = _stream("core50-nc", seed=2)
    assert [len(e.classes_in_experience) for e in s] == [10, 2]  # 10 first, then 5 at a time
    assert sorted(c for e in s for c in e.classes_in_experience) == list(range(N_OBJECTS))
    for e in s:
        assert _sessions_of(e) == set(TRAIN_SESSIONS)
    assert _same(s, get_protocol("core50-nc").stream(train.labels, 2))
    assert not _same(s, get_protocol("core50-nc").stream(train.labels, 3))


def test_core50_nic(core50_env):
    train, s = _stream("core50-nic")
    sessions = core50_sessions(None, "train")
    units = [sorted({(int(c), int(u)) for c, u in zip(train.labels[e.indices], sessions[e.indices])}) for e in s]
    assert len(units[0]) == 10 and len(s[0].classes_in_experience) == 10  # one unit of each of 10 objects
    assert all(len(u) == 5 for u in units[1:-1]) and 1 <= len(units[-1]) <= 5
    flat = [u for us in units for u in us]
    assert len(flat) == len(set(flat)) == N_OBJECTS * len(TRAIN_SESSIONS)  # every unit once
    assert len(s) == 1 + -(-(N_OBJECTS * len(TRAIN_SESSIONS) - 10) // 5)
    assert not {u for _, u in flat} & set(TEST_SESSIONS)
    assert _same(s, get_protocol("core50-nic").stream(train.labels, 0))
    assert not _same(s, get_protocol("core50-nic").stream(train.labels, 1))


def test_core50_stream_refuses_other_labels(core50_env):
    with pytest.raises(BnnclError, match="not those of the CORe50 train split"):
        get_protocol("core50-ni").stream(np.zeros(5, np.int64), 0)


# -- the stream helpers at the full CORe50 scale (labels and sessions only, no images) --------------
FULL_LABELS = np.repeat(np.arange(50), 8 * 3)
FULL_SESSIONS = np.tile(np.repeat(np.array(TRAIN_SESSIONS), 3), 50)


def test_full_scale_experience_counts():
    ni = domain_stream(FULL_LABELS, FULL_SESSIONS, seed=0)
    assert len(ni) == 8 and all(e.classes_in_experience == tuple(range(50)) for e in ni)
    order = np.random.default_rng(0).permutation(50).tolist()
    nc = nc_stream(FULL_LABELS, class_order=order, classes_per_experience=5, first_experience_classes=10)
    assert [len(e.classes_in_experience) for e in nc] == [10] + [5] * 8
    nic = unit_nic_stream(FULL_LABELS, FULL_SESSIONS, first_classes=10, units_per_experience=5, seed=0)
    assert len(nic) == 79 and len(nic[0]) == 10 * 3 and all(len(e) == 5 * 3 for e in nic.experiences[1:])
    assert len(nic[0].classes_in_experience) == 10


def test_domain_stream_order_and_errors():
    s = domain_stream(FULL_LABELS, FULL_SESSIONS, order=[11, 9, 8, 6, 5, 4, 2, 1])
    assert set(FULL_SESSIONS[s[0].indices].tolist()) == {11}
    with pytest.raises(ValueError, match="each domain once"):
        domain_stream(FULL_LABELS, FULL_SESSIONS, order=[1, 2])
    with pytest.raises(ValueError, match="one per label"):
        domain_stream(FULL_LABELS, FULL_SESSIONS[:-1])
    with pytest.raises(ValueError, match=">= 1"):
        unit_nic_stream(FULL_LABELS, FULL_SESSIONS, units_per_experience=0)


@pytest.mark.parametrize("protocol", ["core50-ni", "core50-nc"])
def test_core50_protocols_run_end_to_end(core50_env, protocol):
    """``bnncl run --protocol core50-*`` on the fixture: a fresh head of one row per CORe50 object, every
    experience learned, tested on sessions 3, 7 and 10 only."""
    from bnncl.experiment import RunConfig, run_protocol

    r = run_protocol(RunConfig(protocol=protocol, seed=0))
    assert r["num_classes"] == len(OBJECT_CLASSES) and r["config"]["strategy"] == "slda"  # 50 rows, 12 used here
    assert len(r["experiences"]) == len(get_protocol(protocol).stream(
        load_dataset("core50", "train").labels, 0))
    assert sum(np.asarray(r["confusion"]).sum(axis=1)) == N_OBJECTS * len(TEST_SESSIONS) * FRAMES
    assert 0.0 <= r["final_accuracy"] <= 1.0
