"""Hidden tests (staff only, never copied into the student kit): the public fixtures too."""
from labkit.staff.grading import public_fixtures

globals().update(public_fixtures())


import os as _os

import pytest as _pytest


@_pytest.fixture(scope="session")
def full_fixture(tmp_path_factory):
    """The full-size VGG19 fixture and its reference outputs (see lab_support.py)."""
    from lab_support import make_full_fixture
    folder = _os.environ.get("LABKIT_LAB_FIXTURES") or str(tmp_path_factory.mktemp("full"))
    return make_full_fixture(folder)
