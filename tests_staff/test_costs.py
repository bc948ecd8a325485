"""labkit/engine/costs.py: the multiplies and bytes the benchmark sets against the machine.

The counts must agree with what the engine's code executes: the Winograd tile count with the
tiles ``winograd_cl`` gathers, and the GEMM multiplies with the shapes it multiplies.
"""
import numpy as np
import pytest

from labkit.engine import conv_algos as algos
from labkit.engine import costs


def test_img2col_mults_are_the_direct_count():
    c = costs.conv_cost("img2col", 64, 128, 56, 56)
    assert c["mults"] == 64 * 128 * 9 * 56 * 56
    assert c["min_bytes"] == 4.0 * (64 * 56 * 56 + 9 * 64 * 128 + 128 * 56 * 56)


@pytest.mark.parametrize("method,m", [("winograd", 2), ("winograd4", 4)])
def test_winograd_gemm_mults_match_the_engine(monkeypatch, method, m):
    """Count the multiply-adds of every np.matmul winograd_cl performs and compare."""
    cin, cout, h, w = 8, 16, 13, 10
    counted = []
    real = np.matmul

    def counting(a, b, *args, **kw):
        out = real(a, b, *args, **kw)
        k = np.shape(a)[-1]
        counted.append(int(np.prod(np.shape(out))) * k)
        return out
    monkeypatch.setattr(algos.np, "matmul", counting)
    rng = np.random.default_rng(0)
    algos._winograd(rng.standard_normal((1, cin, h, w)), rng.standard_normal((cin, 3, 3, cout)),
                    None, 1, m, None)
    monkeypatch.setattr(algos.np, "matmul", real)
    model = costs.conv_cost(method, cin, cout, h, w)
    # the filter transform G g G^T (two matmuls) is made once per layer, not per call
    filter_transform = (m + 2) * 3 * 3 * cin * cout + (m + 2) * (m + 2) * 3 * cin * cout
    assert sum(counted) - filter_transform == model["mults"]
    # a model off by one tile row must not agree (negative control)
    wrong = costs.conv_cost(method, cin, cout, h + m, w)
    assert sum(counted) - filter_transform != wrong["mults"]


def test_winograd_executes_fewer_multiplies_than_direct():
    direct = costs.conv_cost("img2col", 256, 256, 56, 56)["mults"]
    f2 = costs.conv_cost("winograd", 256, 256, 56, 56)["stages"]["gemm"]["mults"]
    f4 = costs.conv_cost("winograd4", 256, 256, 56, 56)["stages"]["gemm"]["mults"]
    assert f2 == pytest.approx(direct / 2.25)
    assert f4 == pytest.approx(direct / 4)


def test_bounds_take_the_larger_time_per_part():
    parts = [("a", {"mults": 50e9, "bytes": 1e9, "min_bytes": 1e9}),
             ("b", {"mults": 0.0, "bytes": 20e9, "min_bytes": 1e9})]
    b = costs.bounds(parts, peak_gflops=100, bandwidth_gbs=10)
    assert b["compute_s"] == pytest.approx(1.0)
    assert b["memory_s"] == pytest.approx(2.1)
    assert b["roofline_s"] == pytest.approx(1.0 + 2.0)
    assert b["limit_s"] == pytest.approx(1.0)


def test_style_step_parts_cover_forward_and_backward():
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from bench_kit import STYLE_LAYERS, conv_shapes
    parts = dict(costs.style_step_costs(224, 224, conv_shapes(224, 224, "conv5_1"),
                                        STYLE_LAYERS))
    assert sum(k.endswith(" fwd") and k.startswith("conv") or " fwd " in k for k in parts) == 13
    assert sum(" bwd" in k and k.startswith("conv") for k in parts) == 13
    assert "conv1_1 bwd img2col" in parts and "pool1 bwd" in parts and "gram relu5_1" in parts
