"""labkit/engine/perf.py and the threaded paths it enables: the engine's work split over a pool of
threads (Winograd stages by channel ranges, img2col GEMMs by output channels, style losses by
layer) gives the same results as the single-threaded code (float64, 1e-12 relative), and
``engine_threads()`` leaves OpenBLAS's thread count as it found it. Nothing here is timed."""
import numpy as np
import pytest

from labkit.engine import conv_algos, perf
from labkit.engine.conv_engine import ConvEngine
from labkit.runtime.gradcheck import assert_close

SAME = 1e-12      # threads only reorder independent work: results agree to rounding


@pytest.fixture(scope="module")
def pool():
    """A two-thread pool of our own (works whatever BLAS NumPy uses)."""
    return perf.WorkerPool(2)


@pytest.mark.parametrize("size,parts", [(1, 2), (2, 2), (3, 2), (5, 3), (64, 2), (7, 10)])
def test_split_ranges_cover_once(size, parts):
    ranges = perf.split_ranges(size, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(lo < hi for lo, hi in ranges), ranges
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), ranges
    assert len(ranges) == min(size, parts)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(1, 3, 9, 11, 5), (2, 4, 6, 7, 3), (1, 1, 5, 5, 2)], ids=str)
def test_threaded_winograd_matches_definition(rng, pool, m, shape):
    """Channel ranges split unevenly (3 -> 1 + 2), several images, odd sizes, a bias."""
    n, cin, h, w, cout = shape
    x = rng.standard_normal((n, cin, h, w))
    weight = rng.standard_normal((cin, 3, 3, cout))
    bias = rng.standard_normal(cout)
    want = conv_algos.conv2d_reference(x, weight, bias, 1)
    serial = conv_algos._winograd(x, weight, bias, 1, m, None)
    threaded = conv_algos._winograd(x, weight, bias, 1, m, None, pool)
    assert_close(f"F({m}x{m}) threaded vs definition", threaded, want, 1e-9)
    assert_close(f"F({m}x{m}) threaded vs serial", threaded, serial, SAME)


@pytest.mark.parametrize("stride", [1, 2])
def test_threaded_img2col_input_grad_matches_definition(rng, pool, stride):
    x_shape = (2, 3, 9, 8)
    weight = rng.standard_normal((3, 3, 3, 4))
    dy = rng.standard_normal((2, 4) + ((9 + 2 - 3) // stride + 1, (8 + 2 - 3) // stride + 1))
    want = conv_algos.conv2d_input_grad_reference(dy, weight, 1, stride, x_shape)
    got = conv_algos.conv2d_input_grad_img2col(dy, weight, 1, stride, x_shape, pool)
    assert_close("img2col input gradient, threaded", got, want, 1e-9)


def test_pad_into_threaded(rng, pool):
    x = rng.standard_normal((2, 5, 4, 3))
    want = np.pad(x, ((0, 0), (0, 0), (2, 3), (2, 4)))
    assert np.array_equal(conv_algos.pad_into(x, 2, 1, 2, pool), want)


def test_split_that_drops_work_is_caught(rng, pool, monkeypatch):
    """Negative control: a split that forgets its last range gives a wrong convolution."""
    x = rng.standard_normal((1, 4, 8, 8))
    weight = rng.standard_normal((4, 3, 3, 4))
    want = conv_algos.conv2d_reference(x, weight, None, 1)
    monkeypatch.setattr(perf, "split_ranges",
                        lambda size, parts: [(0, size // 2)] if size > 1 else [(0, size)])
    got = conv_algos._winograd(x, weight, None, 1, 4, None, pool)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("dropped range", got, want, 1e-9)


needs_pool = pytest.mark.skipif(perf.worker_pool() is None,
                                reason="no NumPy OpenBLAS thread control, or LABKIT_THREADS=1")


@needs_pool
@pytest.mark.parametrize("method", ["img2col", "winograd", "winograd4"])
def test_engine_inside_engine_threads_matches_outside(rng, method, monkeypatch):
    monkeypatch.setattr(conv_algos, "CHUNK_BYTES", 1)     # chunks of one tile row too
    x = rng.standard_normal((1, 6, 13, 10))
    weight, bias = rng.standard_normal((6, 3, 3, 5)), rng.standard_normal(5)
    conv = ConvEngine(weight, bias, 1, 1, method)
    y, dx = conv.forward(x), conv.input_grad(x[:, :5], (1, 6, 13, 10))
    with perf.engine_threads():
        assert perf.active_pool() is not None
        y2, dx2 = conv.forward(x), conv.input_grad(x[:, :5], (1, 6, 13, 10))
    assert perf.active_pool() is None
    assert_close(f"{method} forward in engine_threads", y2, y, SAME)
    assert_close(f"{method} input gradient in engine_threads", dx2, dx, SAME)


@needs_pool
def test_engine_threads_restores_blas_threads():
    get_threads = perf._openblas()[0]
    before = get_threads()
    with perf.engine_threads():
        assert get_threads() == 1
        with perf.engine_threads():                       # nested: still single-threaded
            assert get_threads() == 1
        assert perf.active_pool() is not None
    assert get_threads() == before
    with pytest.raises(KeyboardInterrupt):                # restored on errors too
        with perf.engine_threads():
            raise KeyboardInterrupt
    assert get_threads() == before and perf.active_pool() is None


@needs_pool
def test_no_pool_on_the_pool_threads():
    """A worker must not wait for work queued behind itself."""
    with perf.engine_threads():
        assert perf.worker_pool().submit(perf.active_pool).result() is None


def test_labkit_threads_1_turns_the_pool_off(monkeypatch):
    monkeypatch.setitem(perf._POOL, "made", False)
    monkeypatch.setitem(perf._POOL, "pool", None)
    monkeypatch.setenv("LABKIT_THREADS", "1")
    assert perf.worker_pool() is None
    with perf.engine_threads():
        assert perf.active_pool() is None
    monkeypatch.setitem(perf._POOL, "made", False)
    monkeypatch.setenv("LABKIT_THREADS", "two")
    with pytest.raises(ValueError, match="LABKIT_THREADS must be a whole number"):
        perf.worker_pool()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("width", [8, 9], ids=["tiles fit", "cropped"])
@pytest.mark.parametrize("height", [10, 30], ids=["few tile rows", "many tile rows"])
def test_channels_last_winograd_both_splits(rng, pool, m, width, height, monkeypatch):
    """winograd_cl takes and returns channels-last arrays; with threads it splits by output
    channels (few, uneven tile rows) or runs chunks of tile rows end to end (many rows):
    both equal the definition (float64, 1e-9), bias and ReLU included, and the
    mask is applied in the padding copy; a wrong layout of U is refused."""
    monkeypatch.setattr(conv_algos, "CHUNK_BYTES", 1)
    x = rng.standard_normal((2, 3, height, width))
    mask = np.maximum(rng.standard_normal(x.shape), 0)
    weight, bias = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    U = conv_algos.winograd_filter_transform(weight, m, channels_last=True)
    mode, _ = conv_algos.winograd_plan(3, 4, -(-height // m), -(-width // m), m, 8,
                                       pool.workers if pool else 1)
    want = np.maximum(conv_algos.conv2d_reference(x * (mask > 0), weight, bias, 1), 0)
    got = conv_algos.winograd_cl(conv_algos.channels_last(x), U, bias, 1, m, pool, relu=True,
                                 mask=conv_algos.channels_last(mask))
    assert got.shape == (2, height, width, 4)
    assert_close(f"F({m}x{m}) channels-last, split by {mode}", got.transpose(0, 3, 1, 2),
                 want, 1e-9)
    with pytest.raises(ValueError, match="does not fit"):
        conv_algos.winograd_cl(conv_algos.channels_last(x), U.transpose(0, 2, 1), bias, 1, m)


def test_winograd_plan_modes():
    """Few uneven tile rows for two threads: split by channels; otherwise by tile rows."""
    assert conv_algos.winograd_plan(512, 512, 7, 7, 4, workers=2)[0] == "channels"    # 28x28
    assert conv_algos.winograd_plan(512, 512, 7, 7, 4, workers=1)[0] == "rows"
    assert conv_algos.winograd_plan(64, 64, 56, 56, 4, workers=2)[0] == "rows"        # 224x224
    assert conv_algos.winograd_plan(256, 256, 14, 14, 4, workers=2)[0] == "rows"      # 56x56


@needs_pool
@pytest.mark.parametrize("k,s,shape", [(2, 2, (1, 5, 8, 10)), (3, 2, (2, 3, 9, 7)),
                                       (2, 2, (1, 4, 7, 9))], ids=str)
def test_maxpool_inside_engine_threads_matches_outside(rng, k, s, shape):
    """The engine's pooling layer splits channels over threads in the tuned runs; ties
    (zeros after ReLU), overlapping windows and the floor rule give the same results."""
    from labkit.engine.attach import EngineMaxPooling
    x = np.maximum(rng.standard_normal(shape), 0)
    layer = EngineMaxPooling(k, s)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    with perf.engine_threads():
        y2 = layer.forward(x)
        dx2 = layer.backward(dy)
    assert np.array_equal(y2, y) and np.array_equal(dx2, dx)


@pytest.mark.parametrize("n", [1, 2])
def test_threaded_weight_grad_matches_definition(rng, pool, n):
    x = rng.standard_normal((n, 3, 7, 6))
    dy = rng.standard_normal((n, 5, 7, 6))
    want_w, want_b = conv_algos.conv2d_weight_grad_reference(x, dy, 3, 1, 1)
    got_w, got_b = conv_algos.conv2d_weight_grad(x, dy, 3, 1, 1, pool)
    assert got_w.flags.c_contiguous
    assert_close("weight gradient, threaded", got_w, want_w, 1e-9)
    assert_close("bias gradient, threaded", got_b, want_b, 1e-12)


def test_pool_tasks_follow_the_callers_error_settings(pool):
    """np.errstate is per thread: the pool passes the caller's settings on, so a diverging
    run that silences overflow warnings (labkit.runtime.transfer) stays silent on the workers too."""
    def overflow():
        return np.float32(3e38) * np.float32(10)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            pool.submit(overflow).result()
    with np.errstate(over="ignore"):
        assert np.isinf(pool.submit(overflow).result())
