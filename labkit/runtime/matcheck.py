"""A structural check of MATLAB 5 (``-v6``/``-v7``) files before SciPy reads them.

SciPy's reader trusts the sizes written in the file: a numeric array whose data element
is shorter than its dimensions say (e.g. a zero-filled 8-byte tag, from a damaged download)
makes ``scipy.io.loadmat`` crash the interpreter (a segmentation fault in SciPy 1.17), which
no ``except`` can catch. :func:`check_mat5` walks the file's element tree (tags, sizes,
matrix headers; the data itself is skipped, compressed variables are decompressed in
chunks) and raises :class:`MatStructureError` at the first inconsistency, so that the
caller can report a damaged file instead of crashing. Format: MathWorks, "MAT-File Format"
(MATLAB 5.0 Level 5).
"""
import mmap
import struct
import zlib

# data type -> bytes per element (miINT8 ... miUINT64, miUTF8/16/32)
_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
MI_MATRIX, MI_COMPRESSED = 14, 15
_NUMERIC = set(range(6, 16))        # mxDOUBLE ... mxUINT64 classes
_MAX_DEPTH = 64


class MatStructureError(ValueError):
    """The file's element tree is inconsistent (truncated, zero-filled or garbled)."""


def check_mat5(path):
    """Raise MatStructureError if ``path`` is not a consistent Level 5 MAT-file."""
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128:
            raise MatStructureError(f"only {len(header)} bytes; a MAT-file header alone has 128")
        if header[126:128] not in (b"IM", b"MI"):
            raise MatStructureError("no MATLAB 5 header (endian marker missing)")
        end = "<" if header[126:128] == b"IM" else ">"
        version = struct.unpack_from(end + "H", header, 124)[0]
        if version != 0x0100:
            raise MatStructureError(f"MAT-file version {version:#06x}; version 7.3 (HDF5) "
                                    f"files are not read: re-save it in MATLAB with -v7")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:   # no copy in memory
            view = memoryview(data)
            try:
                _elements(view, 128, len(data), end, top=True, depth=0)
            finally:
                view.release()


def _tag(buf, pos, stop, end):
    """-> (type, size, data start, next element start)."""
    if pos + 8 > stop:
        raise MatStructureError(f"element tag at byte {pos} runs past the end")
    word, size = struct.unpack_from(end + "II", buf, pos)
    if word >> 16:                                   # small data element: 4 bytes inline
        kind, size = word & 0xFFFF, word >> 16
        if size > 4:
            raise MatStructureError(f"small element at byte {pos} claims {size} bytes")
        return kind, size, pos + 4, pos + 8
    nxt = pos + 8 + size + ((-size) % 8 if word != MI_COMPRESSED else 0)
    if pos + 8 + size > stop:
        raise MatStructureError(f"element at byte {pos} claims {size:,} bytes; only "
                                f"{stop - pos - 8:,} are left")
    return word, size, pos + 8, min(nxt, stop)


def _elements(buf, pos, stop, end, top, depth):
    while pos < stop:
        if top and stop - pos < 8 and not any(buf[pos:stop]):
            return                                   # padding at the end of the file
        kind, size, start, pos = _tag(buf, pos, stop, end)
        if kind == MI_COMPRESSED and top:
            try:
                raw = zlib.decompress(bytes(buf[start:start + size]))
            except zlib.error as exc:
                raise MatStructureError(f"compressed variable at byte {start - 8}: {exc}")
            _elements(memoryview(raw), 0, len(raw), end, top=False, depth=depth + 1)
        elif kind == MI_MATRIX:
            _matrix(buf, start, start + size, end, depth + 1)
        elif top:
            raise MatStructureError(f"top-level element of type {kind} at byte {start - 8}")
        else:
            raise MatStructureError(f"unexpected element of type {kind} at byte {start - 8}")


def _data(buf, pos, stop, end, what):
    kind, size, start, nxt = _tag(buf, pos, stop, end)
    if kind not in _SIZES:
        raise MatStructureError(f"{what} at byte {pos} has data type {kind}")
    if size % _SIZES[kind]:
        raise MatStructureError(f"{what} at byte {pos}: {size} bytes is not a whole number "
                                f"of type-{kind} values")
    return kind, size, start, nxt


def _matrix(buf, pos, stop, end, depth):
    if depth > _MAX_DEPTH:
        raise MatStructureError("arrays nested too deeply")
    if pos == stop:                                  # an empty miMATRIX is allowed
        return
    kind, size, start, pos = _data(buf, pos, stop, end, "array flags")
    if size < 8:
        raise MatStructureError(f"array flags at byte {start - 8} are {size} bytes")
    flags = struct.unpack_from(end + "I", buf, start)[0]
    cls, complex_ = flags & 0xFF, bool(flags & 0x800)
    kind, size, start, pos = _data(buf, pos, stop, end, "array dimensions")
    if kind not in (5, 6) or size < 8:
        raise MatStructureError(f"array dimensions at byte {start - 8} are malformed")
    dims = struct.unpack_from(end + f"{size // 4}{'i' if kind == 5 else 'I'}", buf, start)
    if min(dims) < 0:
        raise MatStructureError(f"negative array dimension at byte {start}")
    count = 1
    for d in dims:
        count *= d
    _, _, _, pos = _data(buf, pos, stop, end, "array name")
    if cls in _NUMERIC or cls == 4:                  # numeric or char: real (and imaginary)
        for part in ("real", "imaginary")[:1 + complex_]:
            kind, size, _, pos = _data(buf, pos, stop, end, f"{part} data")
            if size != count * _SIZES[kind]:
                raise MatStructureError(f"array at byte {pos}: {size} bytes of data for "
                                        f"{count} values of {_SIZES[kind]} bytes")
    elif cls == 1:                                   # cell: count arrays
        for _ in range(count):
            pos = _child(buf, pos, stop, end, depth)
    elif cls in (2, 3):                              # struct / object: field names, arrays
        if cls == 3:
            _, _, _, pos = _data(buf, pos, stop, end, "class name")
        kind, size, start, pos = _data(buf, pos, stop, end, "field name length")
        length = struct.unpack_from(end + "i", buf, start)[0] if size >= 4 else 0
        kind, size, start, pos = _data(buf, pos, stop, end, "field names")
        if length <= 0 or size % length:
            raise MatStructureError(f"field names at byte {start - 8} are malformed")
        for _ in range(count * (size // length)):
            pos = _child(buf, pos, stop, end, depth)
    elif cls == 5:                                   # sparse: ir, jc, real, (imaginary)
        for part in range(3 + complex_):
            _, _, _, pos = _data(buf, pos, stop, end, "sparse data")
    else:
        raise MatStructureError(f"unknown array class {cls}")


def _child(buf, pos, stop, end, depth):
    kind, size, start, nxt = _tag(buf, pos, stop, end)
    if kind != MI_MATRIX:
        raise MatStructureError(f"element at byte {pos} should be an array, has type {kind}")
    _matrix(buf, start, start + size, end, depth + 1)
    return nxt
