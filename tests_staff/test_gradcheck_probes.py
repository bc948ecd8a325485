"""labkit/runtime/gradcheck.py against forwards that answer probes (issue 19, item 3): a
forward that answers inputs near the last one from a cache, or the same array object from
memory, with an empty (or invented) backward must fail; honest layers must pass."""
import numpy as np
import pytest

from labkit.runtime.gradcheck import GradientCheckError, check_directional, check_vjp


def cube(v):
    return v ** 3


class NearCache:
    """``f`` computed honestly unless the input is within ``tol`` of the last one computed:
    then the stored answer (tests_staff/hostile/probe_attacks.py, as a function)."""

    def __init__(self, f, tol=1e-3, linear_grad=None):
        self.f, self.tol, self.last, self.linear_grad = f, tol, None, linear_grad

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64)
        if self.last is not None and np.max(np.abs(v - self.last[0])) < self.tol:
            y = self.last[1].copy()
            if self.linear_grad is not None:            # a made-up slope, consistent with
                y = y + self.linear_grad * (v - self.last[0])   # the made-up backward
            return y
        y = self.f(v)
        self.last = (v.copy(), y.copy())
        return y


class IdentityCache:
    """Answers the same array object from memory (the old checks changed x in place)."""

    def __init__(self, f):
        self.f, self.obj, self.y = f, None, None

    def __call__(self, v):
        if v is self.obj:
            return self.y.copy()
        self.obj, self.y = v, self.f(v)
        return self.y


@pytest.fixture
def x():
    return np.random.default_rng(7).standard_normal((3, 4))


def test_honest_forward_passes_with_and_without_reference(x):
    check_vjp("cube", cube, lambda dy: 3 * x ** 2 * dy, x)
    check_vjp("cube", cube, lambda dy: 3 * x ** 2 * dy, x, reference=cube)
    dy = np.random.default_rng(8).standard_normal(x.shape)
    check_directional("cube", cube, 3 * x ** 2 * dy, x, dy)
    check_directional("cube", cube, 3 * x ** 2 * dy, x, dy, reference=cube)


def test_negative_control_wrong_gradient_fails(x):
    with pytest.raises(GradientCheckError, match="relative error"):
        check_vjp("cube", cube, lambda dy: 2 * x ** 2 * dy, x, reference=cube)
    dy = np.ones_like(x)
    with pytest.raises(GradientCheckError, match="along direction 0"):
        check_directional("cube", cube, 2 * x ** 2 * dy, x, dy, reference=cube)


def test_cached_forward_and_empty_backward_fail(x):
    """The probe attack: every probe within 1e-3 of x comes from the cache, so the numeric
    gradient is 0, like the empty backward's; both zero fails, with or without reference."""
    dy = np.ones_like(x)
    zero = lambda dy: np.zeros_like(x)      # noqa: E731
    with pytest.raises(GradientCheckError, match="both exactly zero"):
        check_vjp("cube", NearCache(cube), zero, x)
    with pytest.raises(GradientCheckError, match="not the function"):
        check_vjp("cube", NearCache(cube), zero, x, reference=cube)
    with pytest.raises(GradientCheckError, match="both exactly zero"):
        check_directional("cube", NearCache(cube), np.zeros_like(x), x, dy)
    with pytest.raises(GradientCheckError, match="not the function"):
        check_directional("cube", NearCache(cube), np.zeros_like(x), x, dy, reference=cube)


def test_cached_forward_with_a_made_up_slope_fails_against_the_reference(x):
    """A cache that adds a made-up slope (2 x^2, the wrong power rule) to its stored answer
    and a backward that returns the same slope agree with each other: only the forward
    compared with the reference at the probe points catches it."""
    fake = 2 * x ** 2
    dy = np.random.default_rng(9).standard_normal(x.shape)
    with pytest.raises(GradientCheckError, match="not the function|finite differences"):
        check_vjp("cube", NearCache(cube, linear_grad=fake), lambda dy: fake * dy, x,
                  dy=dy, reference=cube)
    with pytest.raises(GradientCheckError, match="not the function|per unit step"):
        check_directional("cube", NearCache(cube, linear_grad=fake), fake * dy, x, dy,
                          reference=cube)
    # the slope is consistent: so the reference is what catches it (the control)
    check_vjp("cube", NearCache(cube, linear_grad=fake), lambda dy: fake * dy, x, dy=dy)


def test_every_probe_is_a_fresh_array(x):
    """A forward answering the same object from memory cannot see the probes: each is a
    new array (so the numeric gradient is the real one and the empty backward fails)."""
    seen = []
    check_vjp("cube", lambda v: seen.append(v) or cube(v), lambda dy: 3 * x ** 2 * dy, x)
    assert len({id(v) for v in seen}) == len(seen) == 1 + 2 * x.size
    assert all(v is not x and v.base is None for v in seen)
    with pytest.raises(GradientCheckError, match="relative error"):
        check_vjp("cube", IdentityCache(cube), lambda dy: np.zeros_like(x), x,
                  dy=np.ones_like(x))


def test_forward_changed_input_is_not_reused(x):
    """x itself is never changed (the old check moved it in place and restored it)."""
    before = x.copy()
    check_vjp("cube", cube, lambda dy: 3 * x ** 2 * dy, x, reference=cube)
    assert np.array_equal(x, before)


class ShapeShifter:
    """Honest at x, then a huge array of zeros at the probes that would broadcast against
    dL/dY (a view: it costs nothing to make, but ``value * dy`` would be 128 GiB)."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, v):
        self.calls += 1
        if self.calls == 1:
            return self.f(v)
        return np.broadcast_to(np.zeros((1, 1, 1)), (2 ** 30, 1, 1))


def test_a_probe_of_another_shape_fails_before_any_arithmetic(x):
    dy = np.random.default_rng(8).standard_normal(x.shape)
    with pytest.raises(GradientCheckError, match=r"at probe 0 your forward returned shape "
                       r"\(1073741824, 1, 1\), expected \(3, 4\)"):
        check_vjp("cube", ShapeShifter(cube), lambda dy: 3 * x ** 2 * dy, x)
    with pytest.raises(GradientCheckError, match=r"at direction 0 your forward returned "
                       r"shape \(1073741824, 1, 1\)"):
        shifter = ShapeShifter(cube)
        shifter.calls = 1         # check_directional has no call at x
        check_directional("cube", shifter, 3 * x ** 2 * dy, x, dy)
