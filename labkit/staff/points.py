"""The rubric, collection and points of the grading plugin (``labkit.staff.grading``).

What a test is worth (``LAB_RUBRIC``, ``POINTS``), which experiment and category it belongs to,
which manifest tests belong to a run, and the grade computed from the results (``Points``, a
mixin of ``labkit.staff.grading.Grader``).
"""
import fnmatch
import os
import re

from labkit.staff._stu_site.sitecustomize import PACKAGE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST_NAME = os.path.join("tests", "grading_manifest.json")
STAFF_TESTS = "tests_staff"
HIDDEN_PREFIX = "hidden/"
DEFAULT_TIMEOUT = 60.0

# The rubric. Every graded test is "lab" (what the handout and the original kit require,
# graded through the original interface: tests_hidden/test_lab_*.py) or "beyond" (this kit's
# extensions: dtype preservation, helper functions, need_param_grad, one-pass backward, error
# types and wording, the drivers' options). A lab row's points are shared by the tests it
# matches, so a task weighs what the lab weighs it (exp 3.1 as the original course: conv and
# pool forward 60, pool5 20, the class 20), not its number of parametrised cases. The README's
# rubric table is this table. Rows: (node-id pattern, experiment, points); first match wins.
LAB_RUBRIC = [
    ("hidden/test_lab_3_1.py::test_conv_forward*", "3.1", 30),
    ("hidden/test_lab_3_1.py::test_pool_forward*", "3.1", 30),
    ("hidden/test_lab_3_1.py::test_pool5_matches_the_reference", "3.1", 20),
    ("hidden/test_lab_3_1.py::test_classifies_the_cat", "3.1", 20),
    ("hidden/test_lab_3_2.py::test_dlp_classifies_like_the_cpu", "3.2", 90),
    ("hidden/test_lab_3_2.py::test_get_top5_runs_forward_itself", "3.2", 10),
    ("hidden/test_lab_3_3.py::test_conv_speedup*", "3.3", 15),
    ("hidden/test_lab_3_3.py::test_conv_backward_raw*", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_pool_backward*", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_relu_backward", "3.3", 5),
    ("hidden/test_lab_3_3.py::test_content_loss", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_style_loss", "3.3", 15),
    ("hidden/test_lab_3_3.py::test_adam", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_feature_network_forward_backward", "3.3", 10),
    # the transfer loop (the original's __main__ blanks; "the transfer runs and produces
    # images"): transfer_loss + style_transfer with the reference layers swapped in
    ("hidden/test_lab_3_3.py::test_transfer_loop_first_steps_match_the_reference", "3.3", 15),
]
# beyond: points per test (first matching pattern, default 1)
POINTS = [
    ("tests/test_vgg_cpu.py::test_raw_and_fast_paths_agree_float64", 3),
    ("tests/test_vgg_cpu.py::test_classifies_end_to_end*", 2),
    ("tests/test_vgg_cpu.py::test_cli_classifies_and_checks_pool5", 2),
    ("tests/test_layer_2.py::test_conv_gradients*", 2),
]
DEFAULT_POINTS = 1
# beyond tests' experiment, by test module (a module not listed belongs to none)
MODULE_EXPERIMENT = {
    "tests/test_layer_1.py": "3.1", "tests/test_layer_2.py": "3.1",
    "tests/test_vgg_cpu.py": "3.1", "hidden/test_hidden_layers.py": "3.1",
    "tests/test_vgg19_demo.py": "3.2",
    "tests/test_layer_3.py": "3.3", "tests/test_style_transfer.py": "3.3",
    "hidden/test_lab_3_1.py": "3.1", "hidden/test_lab_3_2.py": "3.2",
    "hidden/test_lab_3_3.py": "3.3",
}
CATEGORIES = ("lab", "beyond")
# test modules that check the kit's own commands (outputs, inputs, checkpoints at the edges),
# not student work: run for students, never graded (they fail on a blank kit only because the
# commands need the student's network)
NEVER_GRADED = ("tests/test_edges_*.py::*",)


def never_graded(test_id):
    return any(fnmatch.fnmatchcase(test_id, p) for p in NEVER_GRADED)


def lab_row(test_id):
    """The LAB_RUBRIC row (pattern, experiment, points) that ``test_id`` falls in, or None."""
    for row in LAB_RUBRIC:
        if fnmatch.fnmatchcase(test_id, row[0]):
            return row
    return None


def category_for(test_id):
    return "lab" if lab_row(test_id) else "beyond"


def experiment_for(test_id):
    row = lab_row(test_id)
    if row:
        return row[1]
    return MODULE_EXPERIMENT.get(test_id.partition("::")[0])


def points_for(test_id, graded_ids=None):
    """Points of one graded test: a lab row's points shared by the graded tests it matches
    (``graded_ids``: the graded test ids; default: the test alone), or POINTS for beyond."""
    row = lab_row(test_id)
    if row:
        share = sum(fnmatch.fnmatchcase(t, row[0]) for t in graded_ids) if graded_ids else 1
        return row[2] / max(share, 1)
    for pattern, points in POINTS:
        if fnmatch.fnmatchcase(test_id, pattern):
            return points
    return DEFAULT_POINTS


NOT_SUBMITTED = "not submitted"


def find_stu_package(path):
    """The ``stu_upload`` folder that ``path`` names: the folder itself, or its
    ``stu_upload`` sub-folder. Raises ValueError."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, PACKAGE)):
        return os.path.join(path, PACKAGE)
    if os.path.isdir(path) and (os.path.basename(path) == PACKAGE or
                                any(n.endswith(".py") for n in os.listdir(path))):
        return path
    raise ValueError(f"--stu-dir {path}: neither a {PACKAGE} folder nor a folder containing "
                     f"one")



class Points:
    """The grade of a run, from the results a ``Grader`` collected (a mixin of it)."""
    def _selected(self, test_id, module):
        """Whether a manifest test belongs to this run (paths given on the command line,
        -k); hidden tests only with --hidden."""
        hidden = test_id.startswith(HIDDEN_PREFIX)
        if hidden and self.hidden_dir is None:
            return False
        args = self.hidden_args if hidden else self.selected_args
        if hidden or self.selected_args:    # (hidden: all of them unless files are named)
            full_id = test_id
            ok = not args
            inv = str(self.config.invocation_params.dir)
            base = self.hidden_dir if hidden else self.root
            if hidden:
                module, full_id = module[len(HIDDEN_PREFIX):], test_id[len(HIDDEN_PREFIX):]
            mpath = os.path.normpath(os.path.join(base, module))
            for arg in args:
                path, sep, rest = str(arg).partition("::")
                apath = os.path.normpath(os.path.join(inv, path))
                if sep:
                    rel = os.path.relpath(apath, base).replace(os.sep, "/")
                    ok = ok or full_id.startswith(rel + "::" + rest)
                elif mpath == apath or mpath.startswith(apath + os.sep):
                    ok = True
            if not ok:
                return False
        keyword = self.config.getoption("keyword")
        if keyword:
            if self._keyword is None or self._keyword[0] != keyword:
                try:            # compiled once; one that does not compile selects every test
                    from _pytest.mark.expression import Expression
                    self._keyword = (keyword, Expression.compile(keyword))
                except Exception:
                    self._keyword = (keyword, None)
            expr = self._keyword[1]
            if expr is None:
                return True
            try:
                parts = re.split(r"::|/|\[|\]", test_id.lower())
                return expr.evaluate(lambda s: any(s.lower() in p for p in parts))
            except Exception:
                return True
        return True

    def _graded_ids(self):
        """The graded tests of the manifest (or of this run without one): a lab row's points
        are shared among them."""
        if self.manifest is not None:
            return [t for t, v in self.manifest.get("tests", {}).items()
                    if v.get("graded", True)]
        return list(self.results)

    def compute(self):
        rows = []
        manifest_tests = (self.manifest or {}).get("tests", {})
        graded_ids = self._graded_ids()
        present = self.experiments_present
        seen = set()
        for test_id, info in sorted(manifest_tests.items()):
            if test_id in self.deselected or not self._selected(test_id, info["module"]):
                continue
            seen.add(test_id)
            graded = info.get("graded", True)
            max_points = points_for(test_id, graded_ids) if graded else 0
            res = self.results.get(test_id)
            if res is None:
                err = self.collect_errors.get(info["module"])
                res = ({"result": "error", "message": err} if err else
                       {"result": "missing", "message": "not run: missing from this run"})
            rows.append(self._row(test_id, graded, max_points, res, info.get("hidden"), present))
        for test_id, res in sorted(self.results.items()):
            if test_id in seen:
                continue
            if self.manifest is None:
                rows.append(self._row(test_id, True, points_for(test_id, graded_ids), res,
                                      test_id.startswith(HIDDEN_PREFIX), present))
            else:
                res = dict(res, message=(res["message"] + "; " if res["message"] else "") +
                           "not in the grading manifest: 0 points (rebuild it with 'python -m "
                           "labkit.staff.grading manifest')")
                rows.append(self._row(test_id, False, 0, res, test_id.startswith(HIDDEN_PREFIX),
                                      present))
        for module, err in sorted(self.collect_errors.items()):
            if not any(r["module"] == module for r in rows):
                rows.append(self._row(module, self.manifest is None, 0,
                                      {"result": "error", "message": err},
                                      module.startswith(HIDDEN_PREFIX), present))
        hidden_all = {k for k, v in manifest_tests.items() if v.get("hidden")}
        hidden_count = len(hidden_all) or (self.manifest or {}).get(
            "hidden_summary", {}).get("count", 0)
        return self.summarize(
            rows, present, stu_dir=self.stu_pkg, hidden_run=self.hidden_dir is not None,
            hidden_count=hidden_count, manifest=self.manifest is not None,
            init_error=(self.session.init_error if self.session is not None
                        else self.init_error),
            sandbox=self._sandbox_info(), collection_errors=self.collect_errors)

    @staticmethod
    def summarize(rows, present, stu_dir, hidden_run, hidden_count, manifest, init_error,
                  sandbox, collection_errors):
        """The grade of a run from its rows (``compute``; also the merged grade of a grading
        split over processes: labkit.staff.split)."""
        graded = [r for r in rows if r["graded"]]
        counted = [r for r in graded if r["result"] != NOT_SUBMITTED]

        def total(rows_, key):
            return round(sum(r[key] for r in rows_), 2)

        points, max_points = total(counted, "points"), total(counted, "max_points")
        by_cat = {c: [r for r in counted if r["category"] == c] for c in CATEGORIES}
        experiments = {}
        for exp in sorted(present):
            mine = [r for r in counted if r["experiment"] == exp]
            experiments[exp] = {"submitted": present[exp], **{
                f"{c}_{k}": total([r for r in mine if r["category"] == c], key)
                for c in CATEGORIES for k, key in (("points", "points"),
                                                   ("max_points", "max_points"))}}
        return {
            "stu_dir": stu_dir,
            "points": points, "max_points": max_points,
            "percent": round(100.0 * points / max_points, 1) if max_points else 0.0,
            "lab_points": total(by_cat["lab"], "points"),
            "lab_max_points": total(by_cat["lab"], "max_points"),
            "beyond_points": total(by_cat["beyond"], "points"),
            "beyond_max_points": total(by_cat["beyond"], "max_points"),
            "experiments": experiments,
            "graded_tests": len(counted),
            "passed": sum(r["result"] == "passed" for r in counted),
            "failed": sum(r["result"] != "passed" for r in counted),
            "not_submitted": len(graded) - len(counted),
            "hidden_run": hidden_run,
            "hidden_tests_not_run": 0 if hidden_run else hidden_count,
            "manifest": manifest,
            "init_error": init_error,
            "sandbox": sandbox,
            "collection_errors": dict(sorted(collection_errors.items())),
            "tests": rows,
        }

    @staticmethod
    def _row(test_id, graded, max_points, res, hidden, present=None):
        experiment = experiment_for(test_id)
        if graded and experiment and present is not None and not present.get(experiment, True):
            res = {"result": NOT_SUBMITTED, "message": f"exp {experiment} not submitted (none "
                   f"of its files is in {PACKAGE}): not counted"}
            max_points = 0
        passed = res["result"] == "passed"
        return {"test": test_id, "module": test_id.partition("::")[0], "graded": graded,
                "category": category_for(test_id), "experiment": experiment,
                "hidden": bool(hidden), "points": max_points if passed else 0,
                "max_points": max_points, "result": res["result"], "message": res["message"]}

    @classmethod
    def finish(cls, grade, incomplete=False, changed=None):
        """A computed grade's verdict and status (a run's, or its parts' merged): graded, or
        ``incomplete`` (a partial grade); ``changed`` staff files make it an integrity error
        (0 points)."""
        if incomplete:
            grade["status"] = "incomplete"
            grade["verdict"] = "grading did not finish: " + cls.verdict(grade)
        else:
            grade["verdict"] = cls.verdict(grade)
            grade["status"] = "graded"
        if changed:
            grade.update(status="integrity-error", points=0, percent=0.0,
                         integrity_changes=changed[:50])
            grade["verdict"] = (f"GRADING ERROR: staff files changed while grading "
                                f"{grade['stu_dir']}: " + "; ".join(changed[:5]))
        return grade

    @staticmethod
    def verdict(grade):
        if grade["hidden_run"]:
            scope = " (public and hidden tests)"
        elif grade["hidden_tests_not_run"]:
            scope = (f"; public tests only, hidden tests not run "
                     f"({grade['hidden_tests_not_run']} hidden tests)")
        else:
            scope = "; public tests only, hidden tests not run"
        if grade["graded_tests"] and not grade["failed"]:
            what = ("all graded tests passed" if grade["hidden_run"]
                    else "all graded public tests passed")
        else:
            what = f"{grade['passed']} of {grade['graded_tests']} graded tests passed"
        return what + scope

