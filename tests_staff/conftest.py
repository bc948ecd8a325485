"""Staff-only tests (the engine, the staff tools, and checks that need reference answers);
never copied into the student kit. The public fixtures of tests/conftest.py apply here too."""
from labkit.staff.grading import public_fixtures

globals().update(public_fixtures())
