"""Calibration for exp 3.2 (labkit.runtime.calibrate): max-abs statistics -> the lab's quant .npz."""
import os

import numpy as np
import pytest

from labkit.runtime import pycnml_sim
from labkit.runtime.calibrate import (QUANT_LAYERS, QuantFileError, calibrate_vgg19, collect_max_abs,
                              demo_images, find_images, main, read_quant_pairs)
from labkit.runtime.cli import UserError
from labkit.runtime.fixtures import write_vgg19_mat


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    weights = str(folder / "w.mat")
    write_vgg19_mat(weights, "legacy", width_div=16, num_classes=10, seed=11)
    images = demo_images(str(folder / "images"), count=2, seed=50)
    out = str(folder / "q.npz")
    inputs, filters = calibrate_vgg19(weights, images, out, verbose=False)
    return weights, images, out, inputs, filters


def test_npz_reads_back_as_19_quant_params(calibrated):
    _, _, out, inputs, filters = calibrated
    qin, qfil = pycnml_sim.load_quant_npz(out)
    assert len(qin) == len(qfil) == 19 == len(QUANT_LAYERS)
    for q in qin + qfil:
        assert isinstance(q.position, int) and 1.0 <= q.scale < 2.0
    assert [(q.position, q.scale) for q in qin] == [tuple(p) for p in inputs]
    pin, pfil = read_quant_pairs(out)
    assert pin == [(q.position, q.scale) for q in qin]
    assert pfil == [(q.position, q.scale) for q in qfil]


def test_params_map_observed_max_to_127(calibrated):
    """Each parameter represents its tensor's max |x| as exactly 127 (no clipping, full range)."""
    weights, images, _, inputs, filters = calibrated
    input_max, filter_max = collect_max_abs(weights, images, verbose=False)
    assert input_max["conv1_1"] > 50          # mean-subtracted pixels
    for name, (pi, si), (pf, sf) in zip(QUANT_LAYERS, inputs, filters):
        assert input_max[name] > 0 and filter_max[name] > 0, name
        assert input_max[name] * si / 2.0 ** pi == pytest.approx(127, rel=1e-9)
        assert filter_max[name] * sf / 2.0 ** pf == pytest.approx(127, rel=1e-9)


def test_command_line_with_folder(calibrated, tmp_path, capsys):
    weights, images, _, inputs, _ = calibrated
    out = str(tmp_path / "sub" / "q.npz")
    folder = os.path.dirname(images[0])
    assert main(["--weights", weights, "--images", folder, "--out", out]) == 0
    assert read_quant_pairs(out)[0] == [tuple(p) for p in inputs]
    assert "wrote" in capsys.readouterr().out


def test_find_images_errors(tmp_path):
    with pytest.raises(UserError, match="no image files"):
        find_images([str(tmp_path)])
    with pytest.raises(UserError, match="--images"):
        find_images([])


def test_read_quant_pairs_errors(tmp_path):
    missing = str(tmp_path / "none.npz")
    with pytest.raises(QuantFileError, match="python -m labkit.runtime.calibrate") as err:
        read_quant_pairs(missing)
    assert isinstance(err.value, UserError) and isinstance(err.value, FileNotFoundError)
    good = np.tile([2.0, 1.5], 19)
    cases = {"nokey.npz": dict(input=good),
             "short.npz": dict(input=good[:-2], filter=good),
             "frac.npz": dict(input=np.r_[2.5, 1.5, good[2:]], filter=good),
             "neg.npz": dict(input=good, filter=np.r_[good[:-1], -1.0])}
    messages = {"nokey.npz": "no key 'filter'", "short.npz": "36 numbers, expected 38",
                "frac.npz": "conv1_1", "neg.npz": "fc8"}
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(QuantFileError, match=messages[name]):
            read_quant_pairs(str(tmp_path / name))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QuantFileError, match="cannot read"):
        read_quant_pairs(str(tmp_path / "junk.npz"))


# ----------------------------------------------------------------------------- bad input
def _good_pairs():
    return np.tile([2.0, 1.5], 19)


def test_fuzz_damaged_quant_files(tmp_path_factory):
    """Truncated, flipped, zero-filled quant files: QuantFileError naming the file, or 19
    valid pairs each; never another exception."""
    import io

    from labkit.runtime.fuzzing import fuzz_reader
    buf = io.BytesIO()
    np.savez(buf, input=_good_pairs(), filter=_good_pairs())

    def nineteen_pairs(pairs):
        for key in pairs:
            assert len(key) == 19
            assert all(isinstance(p, int) and s > 0 for p, s in key)

    path = tmp_path_factory.mktemp("fuzz") / "q.npz"
    assert fuzz_reader(buf.getvalue(), path, read_quant_pairs, QuantFileError, nineteen_pairs)


def test_npy_strings_and_pickles_are_clear(tmp_path):
    npy = tmp_path / "q.npy"
    np.save(npy, _good_pairs())
    with pytest.raises(QuantFileError, match=r"q.npy is a .npy file"):
        read_quant_pairs(str(npy))
    np.savez(tmp_path / "s.npz", input=np.array(["a"] * 38), filter=_good_pairs())
    with pytest.raises(QuantFileError, match=r"'input' holds <U1 values, expected numbers"):
        read_quant_pairs(str(tmp_path / "s.npz"))
    np.savez(tmp_path / "o.npz", input=np.array([object()] * 38, dtype=object),
             filter=_good_pairs())
    with pytest.raises(QuantFileError, match="o.npz"):
        read_quant_pairs(str(tmp_path / "o.npz"))
    with pytest.raises(QuantFileError, match="is a folder"):
        read_quant_pairs(str(tmp_path))


def test_out_is_written_exactly_where_asked(calibrated, tmp_path, capsys):
    """--out X writes X (not X.npz), prints X, and X reads back as --quant X."""
    weights, images, _, inputs, _ = calibrated
    out = str(tmp_path / "quant_no_suffix")
    assert main(["--weights", weights, "--images", *images, "--out", out]) == 0
    assert sorted(os.listdir(tmp_path)) == ["quant_no_suffix"]
    assert f"wrote {out} " in capsys.readouterr().out
    assert read_quant_pairs(out)[0] == [tuple(p) for p in inputs]
