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
