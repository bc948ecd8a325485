"""Shared fixtures: small VGG19 .mat files with the real MatConvNet struct layout."""
import numpy as np
import pytest

from labkit.fixtures import write_vgg19_mat
from labkit.images import make_demo_image, save_rgb

# grading (--grade, --stu-dir, --hidden, ...; inactive otherwise): see labkit/grading.py
pytest_plugins = ["labkit.grading"]


@pytest.fixture(scope="session")
def mat_files(tmp_path_factory):
    """{'legacy': path, 'meta': path}: VGG19 with channel widths / 16, 10 classes."""
    folder = tmp_path_factory.mktemp("mat")
    paths = {}
    for layout in ("legacy", "meta"):
        paths[layout] = str(folder / f"vgg19_{layout}.mat")
        write_vgg19_mat(paths[layout], layout=layout, width_div=16, num_classes=10, seed=3)
    return paths


@pytest.fixture(scope="session")
def tiny_mat(tmp_path_factory):
    """VGG19 with channel widths / 32 (2..16 channels): fast enough for the loop layers."""
    path = str(tmp_path_factory.mktemp("tiny") / "vgg19_tiny.mat")
    write_vgg19_mat(path, layout="legacy", width_div=32, num_classes=10, fc_width=32, seed=5)
    return path


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "demo.png")
    save_rgb(make_demo_image(180, 260, seed=1), path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
