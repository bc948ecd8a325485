"""labkit/staff/_stu_site/sitecustomize.py in a child process: no "Error in sitecustomize"."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "labkit", "staff", "_stu_site")


def test_child_process_imports_the_student_package_without_site_errors(tmp_path):
    """With no other sitecustomize on the path, CPython 3.11+ printed "Error in
    sitecustomize; KeyError: 'sitecustomize'" in every child (the chained import removed the
    module's own sys.modules entry); that line then replaced the real error in feedback."""
    pkg = tmp_path / "stu_upload"
    pkg.mkdir()
    (pkg / "marker.py").write_text("WHERE = 'student'\n")
    env = dict(os.environ, PYTHONPATH=SITE, LABKIT_STU_DIR=str(pkg))
    r = subprocess.run([sys.executable, "-c",
                        "import sys, stu_upload.marker as m; print(m.WHERE); "
                        "print(sys.modules['sitecustomize'].__file__)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Error in sitecustomize" not in r.stderr and r.stderr == ""
    assert r.stdout.splitlines()[0] == "student"
