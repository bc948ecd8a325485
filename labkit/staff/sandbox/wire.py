"""The grader <-> worker wire format: plain data only, never pickle, never eval.

A frame is ``b"LKW2"``, an 8-byte big-endian header length, a UTF-8 JSON header, then the
binary blobs the header lists (each one array's bytes in C order; its dtype and shape are in
the header, checked against the blob's size: never pickle). Values in the header are JSON primitives (None, bool, int,
finite float, str) or one-key-tagged dicts::

    {"$": "list"|"tuple", "v": [...]}     {"$": "dict", "items": [[key, value], ...]}
    {"$": "nd", "i": blob index, "dt": dtype.str, "sh": [shape], "scalar": bool}      {"$": "float", "v": "nan"|"inf"|"-inf"}
    {"$": "h", "id": int, "kind": "class"|"callable"|"module"|"object", "type": str,
     "m": [method names] (objects only; optional)}
    {"$": "g", "id": int}       a grader object handed to student code (``GraderRef``)
    {"$": "rng", "state": {...}}   a NumPy ``Generator`` (PCG64) sent as a copy of its state

Anything else is refused on both sides (``WireError``). This file is standalone (numpy, json,
struct): the worker gets a copy of it in its scratch folder.
"""
import json
import math
import re
import struct

import numpy as np

MAGIC = b"LKW2"
MAX_DEPTH = 32
MAX_ITEMS = 1_000_000
MAX_HEADER = 64 * 1024 * 1024
MAX_FRAME = 4 * 1024 * 1024 * 1024


class WireError(Exception):
    """A value that may not cross, or a malformed frame."""


MAX_METHODS = 256


class Handle:
    """An opaque reference to an object that lives in the worker. ``methods``: for an
    object, the names of its class's methods (a call ``obj.name(...)`` then takes one
    request, not a getattr and a call); a hint the grader checks only for shape."""
    __slots__ = ("id", "kind", "type", "methods")

    def __init__(self, id, kind, type, methods=()):
        self.id, self.kind, self.type, self.methods = id, kind, type, tuple(methods)


class GraderRef:
    """An opaque reference to an object that lives in the grader and was handed to student
    code on purpose (``Session.export``): the worker can call only its listed methods."""
    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id


# ------------------------------------------------------------------------------- encode
def encode(value, handle_of=None):
    """(JSON-able tree, [blob bytes]). ``handle_of(obj)`` -> Handle for values that are not
    plain data (worker side); without it they raise WireError (grader side)."""
    blobs = []
    count = [0]

    def enc(v, depth):
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
            raise WireError("value nested too deep or too large to send")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and type(v) in (int, bool):
            return v
        if type(v) is float:
            return v if math.isfinite(v) else {"$": "float", "v": repr(v)}
        if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)
                                       and v is not np.generic):
            dt = np.dtype(v)
            if dt.kind in "biufc" and not dt.fields:
                return {"$": "dtype", "v": dt.str}
        if type(v) is np.random.Generator and type(v.bit_generator) is np.random.PCG64:
            st = v.bit_generator.state          # a copy: the sender's does not advance
            return {"$": "rng", "state": {"state": int(st["state"]["state"]),
                                          "inc": int(st["state"]["inc"]),
                                          "has_uint32": int(st["has_uint32"]),
                                          "uinteger": int(st["uinteger"])}}
        if isinstance(v, GraderRef):
            return {"$": "g", "id": int(v.id)}
        if isinstance(v, Handle):
            out = {"$": "h", "id": int(v.id), "kind": str(v.kind), "type": str(v.type)}
            if v.methods and handle_of is not None:     # the worker's word; the grader's
                out["m"] = [str(m) for m in list(v.methods)[:MAX_METHODS]]  # handles go bare
            return out
        if isinstance(v, np.generic) or type(v) is np.ndarray:
            arr = np.asarray(v)
            if arr.dtype.hasobject or arr.dtype.fields is not None:
                if handle_of is None:
                    raise WireError(f"arrays of dtype {arr.dtype} cannot be sent")
                return enc(handle_of(v), depth)
            flat = np.ascontiguousarray(arr).reshape(-1)
            blobs.append(memoryview(flat.view(np.uint8)))      # its bytes, not a copy
            return {"$": "nd", "i": len(blobs) - 1, "dt": arr.dtype.str,
                    "sh": list(arr.shape), "scalar": not isinstance(v, np.ndarray)}
        if type(v) in (list, tuple):
            return {"$": type(v).__name__, "v": [enc(x, depth + 1) for x in v]}
        if type(v) is dict:
            return {"$": "dict", "items": [[enc(k, depth + 1), enc(x, depth + 1)]
                                           for k, x in v.items()]}
        if handle_of is None:
            raise WireError(f"a {type(v).__name__} cannot be sent to student code (plain data, "
                            f"NumPy arrays and student objects only)")
        return enc(handle_of(v), depth)

    return enc(value, 0), blobs


_DTYPE = re.compile(r"[<>|=][biufcUSV]\d{1,9}|[<>|=][mM]8(\[\w{1,5}\])?")


def load_array(blob, dtype, shape):
    """The array of one blob (its C-order bytes) of ``dtype`` (a ``dtype.str``: plain
    numbers, strings, bytes, dates; never objects nor records) and ``shape``, read in
    place: over a ``bytearray`` (the grader reads answers into one) the array shares its
    memory, so a big answer is held once, not twice; over ``bytes`` a writable copy. A
    size that does not match, a malformed dtype or shape are refused (WireError)."""
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise WireError("bad array (its dtype)")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise WireError("bad array (its dtype)") from None
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or not dt.itemsize:
        raise WireError("bad array (its dtype)")
    if not isinstance(shape, list) or len(shape) > 64 or not all(
            type(n) is int and n >= 0 for n in shape):
        raise WireError("bad array (its shape)")
    count = math.prod(shape)
    if len(memoryview(blob)) != count * dt.itemsize:
        raise WireError("bad array (its size does not match its header)")
    try:
        arr = np.frombuffer(blob, dtype=dt, count=count) if count else np.empty(0, dt)
        if not arr.flags.writeable:
            arr = arr.copy()
        return arr.reshape(shape)
    except (ValueError, TypeError, MemoryError) as exc:
        raise WireError(f"bad array ({type(exc).__name__})") from None


def decode(tree, blobs, on_handle=None, on_grader=None):
    """The value of an encoded tree. Arrays come back with ``allow_pickle=False``; handles
    go to ``on_handle(Handle)`` (or come back as Handle); grader references to
    ``on_grader(id)`` (refused without it)."""
    count = [0]

    def dec(v, depth):
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
            raise WireError("value nested too deep or too large")
        if v is None or isinstance(v, (bool, str, int)):
            return v
        if isinstance(v, float):
            return v
        if isinstance(v, list):
            raise WireError("untagged list on the wire")
        if not isinstance(v, dict) or not isinstance(v.get("$"), str):
            raise WireError("malformed value on the wire")
        tag = v["$"]
        if tag == "float":
            if v.get("v") not in ("nan", "inf", "-inf"):
                raise WireError("malformed float")
            return float(v["v"])
        if tag in ("list", "tuple"):
            items = v.get("v")
            if not isinstance(items, list):
                raise WireError("malformed list")
            out = [dec(x, depth + 1) for x in items]
            return out if tag == "list" else tuple(out)
        if tag == "dict":
            out = {}
            for pair in v.get("items", []):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise WireError("malformed dict")
                key = dec(pair[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise WireError("unhashable dict key")
                out[key] = dec(pair[1], depth + 1)
            return out
        if tag == "dtype":
            text = v.get("v")
            if not isinstance(text, str) or not re.fullmatch(r"[<>|=]?[biufc]\d{1,2}", text):
                raise WireError("malformed dtype")
            return np.dtype(text)
        if tag == "nd":
            i = v.get("i")
            if not isinstance(i, int) or not 0 <= i < len(blobs):
                raise WireError("array index out of range")
            arr = load_array(blobs[i], v.get("dt"), v.get("sh"))
            return arr[()] if v.get("scalar") else arr
        if tag == "h":
            h = Handle(v.get("id"), v.get("kind"), v.get("type"))
            if not isinstance(h.id, int) or not isinstance(h.kind, str) or \
                    not isinstance(h.type, str):
                raise WireError("malformed handle")
            h.type = h.type[:100]
            methods = v.get("m", [])
            if not isinstance(methods, list) or len(methods) > MAX_METHODS or not all(
                    isinstance(m, str) and 0 < len(m) <= 100 for m in methods):
                raise WireError("malformed handle")
            h.methods = frozenset(methods)
            return on_handle(h) if on_handle else h
        if tag == "rng":
            st = v.get("state")
            keys = ("state", "inc", "has_uint32", "uinteger")
            if not isinstance(st, dict) or not all(
                    type(st.get(k)) is int and 0 <= st[k] < 1 << 128 for k in keys):
                raise WireError("malformed generator state")
            bg = np.random.PCG64()
            try:
                bg.state = {"bit_generator": "PCG64", "state": {"state": st["state"],
                            "inc": st["inc"]}, "has_uint32": st["has_uint32"],
                            "uinteger": st["uinteger"]}
            except (ValueError, TypeError, OverflowError):
                raise WireError("malformed generator state")
            return np.random.Generator(bg)
        if tag == "g":
            gid = v.get("id")
            if on_grader is None or not isinstance(gid, int) or isinstance(gid, bool):
                raise WireError("unexpected grader reference")
            return on_grader(gid)
        raise WireError(f"unknown tag {tag[:20]!r}")

    return dec(tree, 0)


# ------------------------------------------------------------------------------- frames
def pack(header, blobs):
    return b"".join(pack_parts(header, blobs))


def pack_parts(header, blobs):
    """The frame as [its magic, length and header; each blob as it is] (written in turn, a
    big answer is never joined into one more copy)."""
    header = dict(header, blobs=[len(b) for b in blobs])
    data = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return [MAGIC + struct.pack(">Q", len(data)) + data, *blobs]


def unpack_header(prefix):
    if len(prefix) != 12 or prefix[:4] != MAGIC:
        raise WireError("bad frame")
    (n,) = struct.unpack(">Q", prefix[4:])
    if n > MAX_HEADER:
        raise WireError("frame header too large")
    return n


def parse_header(data):
    # JSON items become Python objects about 20 times their text's size (``[]``: 3 bytes, a
    # 64-byte list): counted before parsing, a header of MAX_HEADER bytes of them would
    # cost the grader 1.5 GB, outside every sandbox limit (red team). No value sent has
    # more than MAX_ITEMS items (encode), each at most a separator and a bracket pair.
    if sum(data.count(c) for c in (b",", b"[", b"{")) > 3 * MAX_ITEMS + 64:
        raise WireError("frame header with too many items")
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"bad frame header ({type(exc).__name__})")
    sizes = header.get("blobs") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise WireError("bad frame header")
    if sum(sizes) > MAX_FRAME:
        raise WireError("frame too large")
    return header, sizes


def read_exact(f, n):
    chunks, left = [], n
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_into(f, n):
    """``n`` bytes into one bytearray (arrays are then read in place: no second copy)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:got + (1 << 24)])
        if not k:
            raise EOFError("the other side closed the pipe")
        got += k
    return buf


def read_frame(f):
    """(header dict, [blobs]) from a binary file object (blocking)."""
    n = unpack_header(read_exact(f, 12))
    header, sizes = parse_header(read_exact(f, n))
    return header, [read_into(f, s) for s in sizes]
