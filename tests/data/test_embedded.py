import numpy as np

from bnncl.data.embedded import BASE_PER_CLASS, NEW_PER_CLASS, TEST_PER_CLASS, embedded_root, load_embedded
from bnncl.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from data_available import needs_fmnist


def test_embedded_subset_is_shipped_and_balanced():
    train, test = load_embedded("train"), load_embedded("test")
    np.testing.assert_array_equal(train.class_counts(), [BASE_PER_CLASS] * 5 + [NEW_PER_CLASS] * 5)
    np.testing.assert_array_equal(test.class_counts(), [TEST_PER_CLASS] * 10)
    assert train.class_names == FASHION_MNIST_CLASSES and train.image_shape == (28, 28, 1)
    assert "MIT" in (embedded_root() / "LICENSE").read_text()
    size = sum(p.stat().st_size for p in embedded_root().iterdir())
    assert size < 5_500_000


@needs_fmnist
def test_embedded_test_images_come_from_the_official_test_split():
    full = load_fashion_mnist("test")
    sub = load_embedded("test")
    keys = {img.tobytes() for img in full.images}
    assert all(img.tobytes() in keys for img in sub.images[:200])
