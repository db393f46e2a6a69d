import pytest
from PIL import Image

from bnncl.data.imagefolder import load_image_folder, load_image_folder_tar
from bnncl.errors import DataError


def _photo(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_user_photos_are_resized_and_cropped(tmp_path):
    _photo(tmp_path / "cat" / "a.jpg", (640, 480), (200, 10, 10))
    _photo(tmp_path / "cat" / "b.png", (100, 300), (190, 20, 20))
    _photo(tmp_path / "dog" / "c.png", (32, 32), 90, mode="L")  # grayscale photo into an RGB model
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path, size=(32, 32), channels=3)
    assert ds.images.shape == (3, 32, 32, 3)
    assert ds.class_names == ("cat", "dog")
    assert ds.labels.tolist() == [0, 0, 1]
    assert abs(int(ds.images[0, 16, 16, 0]) - 200) < 3
    assert (ds.images[2] == 90).all()
    gray = load_image_folder(tmp_path, size=(28, 28), channels=1)
    assert gray.images.shape == (3, 28, 28, 1)


def test_labels_follow_given_class_names(tmp_path):
    _photo(tmp_path / "b" / "x.png", (8, 8), (0, 0, 0))
    _photo(tmp_path / "a" / "y.png", (8, 8), (0, 0, 0))
    ds = load_image_folder(tmp_path, class_names=("b", "a", "c"))
    assert ds.labels.tolist() == [1, 0]  # sorted files: a/y.png then b/x.png
    with pytest.raises(DataError, match="unknown class folder"):
        load_image_folder(tmp_path, class_names=("a",))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(tmp_path / "empty")
    _photo(tmp_path / "mixed" / "a" / "1.png", (8, 8), (1, 2, 3))
    _photo(tmp_path / "mixed" / "a" / "2.png", (9, 8), (1, 2, 3))
    with pytest.raises(DataError, match="different sizes"):
        load_image_folder(tmp_path / "mixed")
    bad = tmp_path / "broken" / "a" / "1.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(DataError, match="unreadable image"):
        load_image_folder(tmp_path / "broken")


def test_tar_archive_errors(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="unreadable archive"):
        load_image_folder_tar(tmp_path / "x.tar.gz", "train")
