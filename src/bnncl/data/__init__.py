"""Datasets: one in-memory type (:class:`ImageDataset`) and loaders for the formats users have."""

from bnncl.data.cifar10 import CIFAR10_CLASSES, default_cifar10_path, load_cifar10, load_cifar10_batches
from bnncl.data.dataset import ImageDataset
from bnncl.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, load_idx_dataset, read_idx
from bnncl.data.imagefolder import load_image_folder, load_image_folder_tar
from bnncl.data.registry import load_dataset

__all__ = [
    "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES", "ImageDataset", "default_cifar10_path", "load_cifar10",
    "load_cifar10_batches", "load_dataset", "load_fashion_mnist", "load_idx_dataset", "load_image_folder",
    "load_image_folder_tar", "read_idx",
]
