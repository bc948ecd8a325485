"""Makes ``import stu_upload`` resolve to a student's folder, also in child processes."""
