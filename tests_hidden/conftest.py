"""Hidden tests (staff only, never copied into the student kit): the public fixtures too."""
from labkit.staff.grading import public_fixtures

globals().update(public_fixtures())
