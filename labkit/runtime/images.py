"""Image loading and saving that accepts what users actually have.

Any Pillow-readable file -> 8-bit RGB: grey (L, I;16, I, F), with alpha (LA, RGBA, PA:
composited on white), palette (P), CMYK, YCbCr, 16-bit. Errors name the file and the fix.
"""
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 20_000 * 20_000     # accept big photos, refuse absurd ones cleanly


class ImageLoadError(Exception):
    """The file is missing, not an image, or cannot be converted to RGB."""


def _to_rgb(img):
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode != "F" or arr.max(initial=0) > 1.0:
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = 1.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_rgb(path):
    """Read ``path`` as an (H, W, 3) uint8 RGB array; raise ImageLoadError with a fix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageLoadError(f"image not found: {path}. Check the path (relative paths start "
                             f"from the folder you run the command in).")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return np.asarray(_to_rgb(img), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path} is not an image Pillow can read (JPEG, PNG, BMP, TIFF, "
                             f"GIF, WebP...). Convert it to PNG or JPEG.") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{path} has more than {MAX_PIXELS:,} pixels; shrink it first "
                             f"(e.g. to a few thousand pixels per side).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"cannot decode {path}: {exc}. The file may be truncated or "
                             f"corrupt; re-save it as PNG or JPEG.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def resize_bilinear(rgb, height, width):
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's bilinear filter
    (what the original ``scipy.misc.imresize`` did)."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    return np.asarray(img.resize((int(width), int(height)), Image.BILINEAR), dtype=np.uint8)


def preprocess(rgb, mean_pixel, height=224, width=224, dtype=np.float32):
    """RGB uint8 (H, W, 3) -> (1, 3, height, width) with the mean pixel subtracted."""
    resized = resize_bilinear(rgb, height, width).astype(np.float64)
    centred = resized - np.asarray(mean_pixel, dtype=np.float64).reshape(1, 1, 3)
    return np.ascontiguousarray(centred.transpose(2, 0, 1)[None].astype(dtype))


def deprocess(image, mean_pixel):
    """(1, 3, H, W) mean-subtracted -> (H, W, 3) uint8 (adds the mean back, clips)."""
    arr = np.asarray(image, dtype=np.float64)[0].transpose(1, 2, 0)
    arr = arr + np.asarray(mean_pixel, dtype=np.float64).reshape(1, 1, 3)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def save_rgb(rgb, path, quality=95):
    """Write an (H, W, 3) uint8 array; the folder is created; format from the extension."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{os.path.splitext(os.fspath(path))[1]}"
    Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(tmp, quality=quality)
    os.replace(tmp, path)   # never leave a half-written image behind


def make_demo_image(height=224, width=224, seed=0):
    """A deterministic synthetic RGB picture (gradients and shapes) for demos and tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    r = 128 + 100 * np.sin(6 * xx + rng.uniform(0, 3))
    g = 128 + 100 * np.cos(5 * yy + rng.uniform(0, 3))
    b = 128 + 100 * np.sin(4 * (xx + yy))
    img = np.stack([r, g, b], axis=-1)
    cy, cx, rad = height * 0.5, width * 0.4, min(height, width) * 0.2
    mask = (np.mgrid[0:height, 0:width][0] - cy) ** 2 + (np.mgrid[0:height, 0:width][1] - cx) ** 2 < rad ** 2
    img[mask] = (230, 60, 40)
    return np.clip(img, 0, 255).astype(np.uint8)
