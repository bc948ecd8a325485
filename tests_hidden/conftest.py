"""Hidden tests (staff only, never copied into the student kit): the public fixtures too."""
from labkit.staff.grading import public_fixtures

globals().update(public_fixtures())


import pytest as _pytest


@_pytest.fixture(scope="session")
def full_fixture(tmp_path_factory):
    """The full-size VGG19 fixture and its reference outputs (see lab_support.py)."""
    from lab_support import fixture_folder, make_full_fixture
    return make_full_fixture(fixture_folder())
