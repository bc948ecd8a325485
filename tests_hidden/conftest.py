"""Hidden tests (staff only, never copied into the student kit): the public fixtures too."""
from labkit.staff.grading import public_fixtures

globals().update(public_fixtures())


import pytest as _pytest


@_pytest.fixture(scope="session")
def full_fixture(request):
    """The full-size VGG19 fixture and its reference outputs (see lab_support.py). Graded
    in the sandbox, the files student code reads (.mat, image, quant) are shared read-only
    with the worker; the reference outputs stay in this process."""
    from lab_support import fixture_folder, make_full_fixture
    fixture = make_full_fixture(fixture_folder())
    grader = request.config.pluginmanager.get_plugin("labkit-grader")
    session = getattr(grader, "session", None)
    if session is not None:
        fixture.update({k: session.share(fixture[k]) for k in ("mat", "image", "quant")})
    return fixture
