"""A module fixture slower than the per-test limit (run by tests_staff/test_grading_timeouts.py
only: not collected by the suites, its name does not start with test_)."""
import os
import time

import pytest


@pytest.fixture(scope="module")
def built():
    time.sleep(float(os.environ.get("LABKIT_SLOW_SETUP_SECONDS", "2")))
    return 1


def test_uses_a_slow_module_fixture(built):
    assert built == 1
