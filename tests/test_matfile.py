"""labkit/runtime/matfile.py and labkit/runtime/fixtures.py: both layouts of the VGG19 file, and bad files."""
import os

import numpy as np
import pytest
import scipy.io

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.fixtures import LEGACY_FIELDS, META_FIELDS, write_vgg19_mat
from labkit.runtime.matfile import WeightsFileError, load_vgg19_mat


@pytest.mark.parametrize("layout", ["legacy", "meta"])
def test_fixture_has_the_real_struct_layout(mat_files, layout):
    data = scipy.io.loadmat(mat_files[layout])
    top = [k for k in data if not k.startswith("__")]
    assert top == (["layers", "classes", "normalization"] if layout == "legacy"
                   else ["layers", "meta"])
    layers = data["layers"]
    assert layers.shape == (1, 43)
    fields = LEGACY_FIELDS if layout == "legacy" else META_FIELDS
    for i, (name, kind, _) in enumerate(spec.FILE_LAYERS):
        rec = layers[0][i][0][0]
        assert rec.dtype.names == fields[kind]
        assert rec["name"][0] == ("prob" if kind == "softmax" else name)
    if layout == "legacy":
        w, b = layers[0][0][0][0][0][0]                        # the AICS labs' access path
        assert w.dtype == np.float32 and b.shape == (1, w.shape[3])
        assert data["normalization"][0][0][0].shape == (224, 224, 3)
        assert layers[0][4][0][0]["pad"].tolist() == [[0, 0, 0, 0]]
    else:
        w = layers[0][0][0][0][2][0][0]                         # deeplearning.ai path
        b = layers[0][0][0][0][2][0][1]
        assert b.shape == (w.shape[3], 1)
        assert layers[0][0][0][0]["pad"].dtype == np.uint8      # MATLAB's compact integers
        assert np.allclose(data["meta"][0][0][2][0][0][2][0][0], [123.68, 116.779, 103.939])
        assert layers[0][4][0][0]["pad"].tolist() == [[0, 1, 0, 1]]


@pytest.mark.parametrize("layout", ["legacy", "meta"])
def test_loader_reads_both_layouts(mat_files, layout):
    weights = load_vgg19_mat(mat_files[layout])
    assert weights.layout == layout
    assert [layer.name for layer in weights.layers] == spec.FILE_LAYER_NAMES
    assert np.allclose(weights.mean_pixel, [123.68, 116.779, 103.939])
    assert len(weights.class_names) == 10 == weights.num_classes
    conv = weights.layer("conv2_1")
    assert conv.weight.shape == (3, 3, 4, 8) and conv.bias.shape == (8,)
    assert conv.pad == (1, 1, 1, 1) and conv.stride == (1, 1)
    assert weights.layer("pool3").pool == (2, 2)
    assert weights.layer("fc6").weight.shape == (7, 7, 32, 256)


def test_both_layouts_hold_the_same_numbers(mat_files):
    a, b = load_vgg19_mat(mat_files["legacy"]), load_vgg19_mat(mat_files["meta"])
    for la, lb in zip(a.layers, b.layers):
        if la.type == "conv":
            assert np.array_equal(la.weight, lb.weight) and np.array_equal(la.bias, lb.bias)
    assert a.class_names == b.class_names


def test_missing_file_message_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsFileError) as err:
        load_vgg19_mat(tmp_path / "nope.mat")
    text = str(err.value)
    for part in ("not found", spec.LEGACY_URL, spec.LEGACY_MD5, "models/", "--demo"):
        assert part in text


def test_truncated_file(mat_files, tmp_path):
    raw = open(mat_files["legacy"], "rb").read()
    cut = tmp_path / "cut.mat"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsFileError, match="truncated or corrupt"):
        load_vgg19_mat(cut)
    cutm = tmp_path / "cutm.mat"
    cutm.write_bytes(open(mat_files["meta"], "rb").read()[:5000])
    with pytest.raises(WeightsFileError, match="truncated or corrupt"):
        load_vgg19_mat(cutm)


def test_text_file_is_not_a_mat(tmp_path):
    bad = tmp_path / "weights.mat"
    bad.write_text("<html>404 not found</html>")
    with pytest.raises(WeightsFileError, match="cannot read"):
        load_vgg19_mat(bad)


def test_mat_without_layers(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"x": np.ones(3)})
    with pytest.raises(WeightsFileError, match="no 'layers' variable"):
        load_vgg19_mat(path)


def test_network_that_is_not_vgg19(tmp_path, mat_files):
    data = scipy.io.loadmat(mat_files["legacy"])
    short = tmp_path / "vgg16ish.mat"
    scipy.io.savemat(short, {"layers": data["layers"][:, :37], "classes": data["classes"],
                             "normalization": data["normalization"]})
    with pytest.raises(WeightsFileError, match="not VGG19: it has 37 layers"):
        load_vgg19_mat(short)


def test_wrong_filter_shape_is_reported(tmp_path):
    from labkit.runtime.fixtures import random_vgg19_params
    params = random_vgg19_params(width_div=32)
    w, b = params["conv2_1"]
    params["conv2_1"] = (np.zeros((3, 3, w.shape[2] + 1, w.shape[3]), np.float32), b)
    path = tmp_path / "bad.mat"
    write_vgg19_mat(path, params=params)
    with pytest.raises(WeightsFileError, match=r"conv2_1: filters have shape \(3, 3, 3, 4\)"):
        load_vgg19_mat(path)


def test_full_size_parameter_count():
    """width_div=1 gives exactly the real file's 143,667,240 parameters (1000 classes)."""
    from labkit.runtime.fixtures import random_vgg19_params
    shapes = {}
    cin = 3
    for name, kind, cout in spec.FILE_LAYERS:
        if kind == "conv":
            k = 7 if name == "fc6" else (1 if name.startswith("fc") else 3)
            shapes[name] = (k * k * cin + 1) * cout
            cin = cout
    assert sum(shapes.values()) == 143_667_240
    small = random_vgg19_params(width_div=64, num_classes=1000)
    assert small["fc8"][0].shape[-1] == 1000
