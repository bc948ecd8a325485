"""Image loading and saving that accepts what users actually have.

Any Pillow-readable file -> 8-bit RGB: grey (L, I;16, I, F), with alpha (LA, RGBA, PA:
composited on white), palette (P), CMYK, YCbCr, 16-bit; turned upright by its EXIF
orientation (phone photos). Every problem with a file, whatever Pillow raises on a damaged
one, becomes an :class:`ImageLoadError` naming the file and the fix.
"""
import os
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labkit.runtime.cli import atomic_path, input_problem

MAX_PIXELS = 20_000 * 20_000     # accept big photos, refuse absurd ones cleanly
MAX_UPSCALE = 4                  # preprocess() warns when it enlarges an image more than this


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
        img = Image.fromarray(arr)          # 2-D uint8 -> mode "L"
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def upright(img):
    """Apply the EXIF orientation tag (phones store portraits sideways plus a tag); an
    image without one, or with a damaged one, is returned as it is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:       # a malformed EXIF block must not make a readable image fail
        return img


def load_rgb(path):
    """Read ``path`` as an (H, W, 3) uint8 RGB array, upright by its EXIF orientation;
    raise ImageLoadError with a fix."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise ImageLoadError(f"image not found: {path}. Check the path (relative paths start "
                             f"from the folder you run the command in, "
                             f"{os.path.abspath(os.curdir)}).")
    if os.path.isdir(path):
        raise ImageLoadError(f"{path} is a folder, not an image; pass an image file "
                             f"(JPEG, PNG, ...).")
    problem = input_problem(path)
    if problem and problem.startswith("is empty"):
        raise ImageLoadError(f"{path} is empty (0 bytes); pass a JPEG or PNG image.")
    if problem:
        raise ImageLoadError(f"image {path} {problem}.")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                rgb = np.asarray(_to_rgb(upright(img)), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path} is not an image Pillow can read (JPEG, PNG, BMP, TIFF, "
                             f"GIF, WebP...). Convert it to PNG or JPEG.") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{path} has more than {MAX_PIXELS:,} pixels; shrink it first "
                             f"(e.g. to a few thousand pixels per side).") from None
    except MemoryError:
        raise ImageLoadError(f"{path} is too large to decode in the available memory; "
                             f"shrink it first.") from None
    except Exception as exc:    # Pillow raises many types on damaged files
        text = " ".join(str(exc).split())[:200]
        raise ImageLoadError(f"cannot decode {path}: {type(exc).__name__}: {text}. The file "
                             f"may be truncated or corrupt; re-save it as PNG or JPEG.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageLoadError(f"{path} decoded to an array of shape {rgb.shape}, not an RGB "
                             f"picture; re-save it as PNG or JPEG.")
    return rgb


def upscale_warning(shape, height, width):
    """The warning text when an (h, w) image is enlarged more than MAX_UPSCALE times to
    (height, width), else None."""
    h, w = shape[:2]
    if height > MAX_UPSCALE * h or width > MAX_UPSCALE * w:
        return (f"warning: the image is only {w}x{h} pixels and is enlarged to "
                f"{width}x{height}; the result will be blurry and the network sees little "
                f"detail. Use a larger picture.")
    return None


def _rgb_array(rgb):
    """(H, W, 3) uint8, C-contiguous: what Image.fromarray reads as mode "RGB" (without the
    ``mode=`` argument, deprecated since Pillow 11.3)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    return arr


def resize_bilinear(rgb, height, width):
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's bilinear filter
    (what the original ``scipy.misc.imresize`` did)."""
    img = Image.fromarray(_rgb_array(rgb))
    return np.asarray(img.resize((int(width), int(height)), Image.BILINEAR), dtype=np.uint8)


def preprocess(rgb, mean_pixel, height=224, width=224, dtype=np.float32):
    """RGB uint8 (H, W, 3) -> (1, 3, height, width) with the mean pixel subtracted.

    Prints a warning to stderr when the image is enlarged more than MAX_UPSCALE times."""
    message = upscale_warning(np.shape(rgb), height, width)
    if message:
        print(message, file=sys.stderr)
    resized = resize_bilinear(rgb, height, width).astype(np.float64)
    centred = resized - np.asarray(mean_pixel, dtype=np.float64).reshape(1, 1, 3)
    return np.ascontiguousarray(centred.transpose(2, 0, 1)[None].astype(dtype))


def deprocess(image, mean_pixel):
    """(1, 3, H, W) mean-subtracted -> (H, W, 3) uint8 (adds the mean back, clips)."""
    arr = np.asarray(image, dtype=np.float64)[0].transpose(1, 2, 0)
    arr = arr + np.asarray(mean_pixel, dtype=np.float64).reshape(1, 1, 3)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def save_rgb(rgb, path, quality=95):
    """Write an (H, W, 3) uint8 array; the folder is created; format from the extension.

    Written under a temporary name in the same folder, then renamed: a failure (full disk,
    Ctrl-C) leaves the previous file or none, never half an image, and concurrent writers
    never share a temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with atomic_path(path, mode=0o666) as tmp:      # the permissions open() would give
        Image.fromarray(_rgb_array(rgb)).save(tmp, quality=quality)


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
