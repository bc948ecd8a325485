"""Damaged copies of a file's bytes, for the readers' fuzz tests (tests/test_*.py).

The readers' contract: for ANY bytes, "our error naming the file, or a correct result".
``damaged_bytes(data)`` is a Hypothesis strategy of damaged copies of ``data``: truncated at
any offset, a few bytes flipped, a run of bytes zero-filled, all zeros, or empty. ``FUZZ``
is the bounded, deterministic setting every fuzz test uses (CI must not find new examples
on each run). Needs ``hypothesis`` (requirements.txt); only the tests import this module.
"""
from hypothesis import HealthCheck, settings, strategies as st

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def damaged_bytes(data):
    n = len(data)

    def truncate(cut):
        return data[:cut]

    def flip(changes):
        out = bytearray(data)
        for offset, mask in changes:
            out[offset % n] ^= mask
        return bytes(out)

    def zero_fill(span):
        start, length = span
        start %= n
        return data[:start] + bytes(min(length, n - start)) + data[start + length:]

    return st.one_of(
        st.integers(0, n - 1).map(truncate),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)),
                 min_size=1, max_size=4).map(flip),
        st.tuples(st.integers(0, n - 1), st.integers(1, max(1, n // 4))).map(zero_fill),
        st.just(bytes(n)),                                   # all zeros
        st.just(b""),                                        # empty
    )


def fuzz_reader(good, path, read, error, check_result):
    """Write damaged copies of the bytes ``good`` to ``path`` (a pathlib.Path) and read each
    with ``read(str(path))``: it must raise ``error`` with the path in its message, or return
    a result that ``check_result(result)`` accepts (it asserts). Returns how many damaged
    copies were rejected, so the caller can check that the fuzzer tested something."""
    from hypothesis import given

    rejected = []

    @FUZZ
    @given(damaged_bytes(good))
    def check(data):
        path.write_bytes(data)
        try:
            result = read(str(path))
        except error as exc:
            assert str(path) in str(exc), exc
            rejected.append(True)
            return
        check_result(result)

    check()
    return len(rejected)
