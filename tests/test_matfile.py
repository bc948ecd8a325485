"""labkit/runtime/matfile.py and labkit/runtime/fixtures.py: both layouts of the VGG19 file, and bad files."""
import itertools
import os

import numpy as np
import pytest
import scipy.io

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.fixtures import LEGACY_FIELDS, META_FIELDS, write_vgg19_mat
from labkit.runtime.matfile import WeightsFileError, c_order, load_vgg19_mat


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


def test_c_order_is_an_equal_row_major_copy():
    """c_order: a row-major copy of any layout (the file's column-major, row-major, strided,
    axes moved), tiles ragged at the edges, 0-size and 1-D arrays."""
    rng = np.random.default_rng(7)
    for shape in [(7, 7, 32, 37), (3, 3, 4, 16), (5, 17), (1, 1, 3, 1), (9,), (0, 4), (2, 3, 0)]:
        base = rng.standard_normal(tuple(2 * n for n in shape))
        first = base[tuple(slice(n) for n in shape)]
        layouts = {"F": np.asfortranarray(first), "C": np.ascontiguousarray(first),
                   "strided": base[tuple(slice(None, None, 2) for _ in shape)],
                   "moved": np.moveaxis(np.ascontiguousarray(np.moveaxis(first, -1, 0)), 0, -1)}
        for (order, a), block in itertools.product(layouts.items(), (4, 64)):
            out = c_order(a, np.float32, block=block)
            where = f"shape {shape}, {order}, block {block}"
            assert out.flags.c_contiguous and out.dtype == np.float32, where
            assert out.shape == a.shape and np.array_equal(out, a.astype(np.float32)), where
            assert not np.shares_memory(out, a), where


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


# ----------------------------------------------------------------------------- bad input
def _small_mat(folder, layout):
    path = os.path.join(folder, f"small_{layout}.mat")
    write_vgg19_mat(path, layout=layout, width_div=64, num_classes=3, fc_width=4, seed=7)
    with open(path, "rb") as f:
        return f.read()


def _our_error_or_vgg19(path):
    """The reader's contract: a WeightsFileError naming the file, or a valid VGG19."""
    try:
        weights = load_vgg19_mat(path)
    except WeightsFileError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return None
    assert [layer.name for layer in weights.layers] == spec.FILE_LAYER_NAMES
    for layer in weights.layers:
        if layer.type == "conv":
            assert np.all(np.isfinite(layer.weight)) and np.all(np.isfinite(layer.bias))
    return weights


@pytest.mark.parametrize("layout", ["legacy", "meta"])
def test_fuzz_damaged_mat_files(tmp_path_factory, layout):
    """Truncated, byte-flipped, zero-filled, empty files: our error or a correct result."""
    from hypothesis import given

    from labkit.runtime.fuzzing import FUZZ, damaged_bytes
    folder = str(tmp_path_factory.mktemp("fuzz"))
    good = _small_mat(folder, layout)
    path = os.path.join(folder, "damaged.mat")
    outcomes = []

    @FUZZ
    @given(damaged_bytes(good))
    def check(data):
        with open(path, "wb") as f:
            f.write(data)
        outcomes.append(_our_error_or_vgg19(path) is None)

    check()
    assert any(outcomes), "no damaged file was rejected: the fuzzer tested nothing"


@pytest.mark.parametrize("content", [b"", b"\0" * 200, b"MATLAB 5.0", b"\0" * 128 + b"\1\2"])
def test_empty_short_and_zero_filled_files(tmp_path, content):
    path = tmp_path / "w.mat"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError, match="w.mat") as err:
        load_vgg19_mat(path)
    assert "Download it again" in str(err.value)


def test_nan_weights_are_rejected(tmp_path):
    from labkit.runtime.fixtures import random_vgg19_params
    params = random_vgg19_params(width_div=64, num_classes=3, fc_width=4, seed=2)
    params["conv3_2"][0][0, 0, 0, :2] = np.nan
    path = str(tmp_path / "nan.mat")
    write_vgg19_mat(path, params=params)
    with pytest.raises(WeightsFileError, match=r"conv3_2: 2 of .* filters are NaN or infinite"):
        load_vgg19_mat(path)


def test_folder_is_named(tmp_path):
    with pytest.raises(WeightsFileError, match="is a folder"):
        load_vgg19_mat(tmp_path)


def test_default_path_is_found_from_another_folder(tmp_path, monkeypatch):
    """The default models/... path is looked for in the current folder, then the repository;
    the "not found" message says where it looked."""
    from labkit.runtime import cli
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    monkeypatch.setattr(cli, "REPO_ROOT", str(repo))
    with pytest.raises(WeightsFileError) as err:
        load_vgg19_mat(cli.DEFAULT_WEIGHTS)
    first = str(err.value).splitlines()[0]
    assert str(tmp_path / cli.DEFAULT_WEIGHTS) in first and str(repo) in first
    os.makedirs(repo / "models")
    write_vgg19_mat(str(repo / cli.DEFAULT_WEIGHTS), width_div=64, num_classes=3, fc_width=4)
    assert load_vgg19_mat(cli.DEFAULT_WEIGHTS).path == str(repo / cli.DEFAULT_WEIGHTS)
