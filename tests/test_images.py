"""labkit/runtime/images.py: odd images become RGB; bad files get clear errors."""
import numpy as np
import pytest
from PIL import Image

from labkit.runtime.images import (ImageLoadError, deprocess, load_rgb, make_demo_image, preprocess,
                           resize_bilinear, save_rgb)

MEAN = np.array([123.68, 116.779, 103.939])


def _save(tmp_path, name, img):
    path = tmp_path / name
    img.save(path)
    return path


def test_grey_rgba_palette_16bit_cmyk(tmp_path):
    rgb = make_demo_image(20, 30)
    grey = _save(tmp_path, "g.png", Image.fromarray(rgb[..., 0], "L"))
    out = load_rgb(grey)
    assert out.shape == (20, 30, 3) and np.array_equal(out[..., 0], out[..., 2])

    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    rgba[0, 0, 3] = 0                                     # transparent pixel -> white
    out = load_rgb(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert out.shape == (20, 30, 3) and out[0, 0].tolist() == [255, 255, 255]
    assert np.array_equal(out[5, 5], rgb[5, 5])

    pal = Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    assert load_rgb(_save(tmp_path, "p.png", pal)).shape == (20, 30, 3)

    deep = (rgb[..., 1].astype(np.uint16) * 257)
    path16 = _save(tmp_path, "d.png", Image.fromarray(deep))
    assert Image.open(path16).mode.startswith("I")
    out = load_rgb(path16)
    assert np.abs(out[..., 0].astype(int) - rgb[..., 1]).max() <= 1

    cmyk = _save(tmp_path, "c.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"))
    assert load_rgb(cmyk).shape == (20, 30, 3)


def test_missing_and_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="image not found"):
        load_rgb(tmp_path / "none.jpg")
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_rgb(bad)
    good = _save(tmp_path, "t.png", Image.fromarray(make_demo_image(64, 64), "RGB"))
    truncated = tmp_path / "t2.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cannot decode|not an image"):
        load_rgb(truncated)


def test_preprocess_shapes_and_round_trip():
    rgb = make_demo_image(50, 70)
    x = preprocess(rgb, MEAN, 50, 70, np.float64)
    assert x.shape == (1, 3, 50, 70) and x.dtype == np.float64
    assert np.array_equal(deprocess(x, MEAN), rgb)          # no resize -> exact
    assert preprocess(rgb, MEAN, 224, 224).shape == (1, 3, 224, 224)
    assert resize_bilinear(rgb, 10, 12).shape == (10, 12, 3)


def test_save_rgb_creates_folder_and_round_trips(tmp_path):
    rgb = make_demo_image(16, 24)
    path = tmp_path / "sub" / "x.png"
    save_rgb(rgb, path)
    assert np.array_equal(load_rgb(path), rgb)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzz_damaged_images(tmp_path_factory, fmt):
    """Truncated, byte-flipped, zero-filled, empty images: ImageLoadError naming the file,
    or an (H, W, 3) uint8 picture; never another exception."""
    import io

    from labkit.runtime.fuzzing import fuzz_reader
    buf = io.BytesIO()
    Image.fromarray(make_demo_image(12, 16)).save(buf, format=fmt)

    def picture(rgb):
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3

    path = tmp_path_factory.mktemp("fuzz") / f"damaged.{fmt.lower()}"
    assert fuzz_reader(buf.getvalue(), path, load_rgb, ImageLoadError, picture), \
        "no damaged image was rejected: the fuzzer tested nothing"

def test_folder_is_not_called_corrupt(tmp_path):
    with pytest.raises(ImageLoadError, match="is a folder, not an image"):
        load_rgb(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png is empty"):
        load_rgb(tmp_path / "empty.png")


def test_exif_orientation_is_applied(tmp_path):
    """A phone portrait: pixels stored sideways plus EXIF Orientation 6 (rotate 90 CW)."""
    stored = np.zeros((20, 40, 3), np.uint8)          # landscape as stored, 40 wide
    stored[:, :10] = (255, 0, 0)                      # red band on the stored left edge
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    img.save(path, exif=exif, quality=100)
    out = load_rgb(path)
    assert out.shape == (40, 20, 3), "not turned upright"
    assert out[:10, :, 0].mean() > 200 and out[-10:, :, 0].mean() < 60   # red now on top
    plain = tmp_path / "plain.jpg"
    img.save(plain, quality=100)
    assert load_rgb(plain).shape == (20, 40, 3)


def test_tiny_image_warns_once(capsys):
    preprocess(make_demo_image(5, 5), MEAN, 224, 224)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "5x5" in err and "224x224" in err
    preprocess(make_demo_image(100, 120), MEAN, 224, 224)
    assert capsys.readouterr().err == ""


def test_no_pillow_deprecation_warnings(tmp_path):
    import warnings
    rgb = make_demo_image(10, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_rgb(rgb, tmp_path / "a.png")
        deep = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
        deep.save(tmp_path / "d.png")
        load_rgb(tmp_path / "d.png")
        resize_bilinear(rgb, 20, 24)


def test_save_rgb_leaves_no_temporary_file(tmp_path):
    save_rgb(make_demo_image(8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError):
        save_rgb(make_demo_image(8, 8), tmp_path / "x.unknown-extension")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
