"""Command-line plumbing shared by the main_exp_*.py drivers (not a student file)."""
import hashlib
import os
import sys
import urllib.error
import urllib.request

from labkit.runtime import vgg19_spec as spec

DEFAULT_WEIGHTS = os.path.join("models", spec.REAL_FILE_NAME)


class UserError(Exception):
    """An error caused by input the user can fix; the drivers print it without a traceback."""


NO_LEGACY_FLAG = "--no-legacy"
NO_LEGACY_HELP = ("do not install the legacy shim (np.float & co., scipy.misc.imread/imresize/"
                  "imsave) for student code written for the original lab's NumPy/SciPy")


def install_legacy(argv=None):
    """Install labkit.runtime.legacy before student code is imported, unless ``--no-legacy``
    is among the arguments or ``LABKIT_LEGACY=0``."""
    from labkit.runtime import legacy
    argv = sys.argv[1:] if argv is None else argv
    if NO_LEGACY_FLAG in argv:
        return False
    return legacy.install()


def run_main(main):
    """Call ``main()``; print known user errors as one clear message and exit 2, and turn
    Ctrl-C into exit 130 (the drivers save their state before re-raising it). The legacy
    shim is installed first (see ``install_legacy``)."""
    from labkit.runtime.images import ImageLoadError
    install_legacy()
    from labkit.runtime.matfile import WeightsFileError
    try:
        return main()
    except (UserError, WeightsFileError, ImageLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        sys.exit(130)


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download_weights(dest, url=spec.LEGACY_URL, md5=spec.LEGACY_MD5, timeout=30):
    """Download the real weights to ``dest`` with a progress bar and an MD5 check.

    Writes to ``dest + '.part'`` and renames only after the checksum matches, so an
    interrupted or failed download never leaves a file that looks complete.
    """
    from tqdm import tqdm
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest)) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise UserError(f"download of {url} failed: {exc}.\n  Without internet access, "
                        f"download the file on another machine and copy it to {dest}.") from None
    got = md5sum(part)
    if md5 and got != md5:
        raise UserError(f"the downloaded file's MD5 is {got}, expected {md5}; it was kept as "
                        f"{part} for inspection. Try the download again.")
    os.replace(part, dest)
    return dest
