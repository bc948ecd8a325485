"""The mutation catalogue (labkit.staff.mutants, tests_staff/data/mutants.json): classic
one-line mistakes across the six student files, each applied to the reference, must fail a
public test of their file with a message that names the quantity, and lose lab points in
exactly their own rubric rows. About 10 minutes on 2 cores: marker ``mutants`` (deselected by
default; ``python -m pytest -q -m mutants``; CI runs it)."""
import collections
import json
import os

import pytest

from labkit.staff import mutants as mut
from labkit.staff.points import LAB_RUBRIC

CATALOGUE = mut.load_catalogue()


def test_the_catalogue_is_well_formed(tmp_path):
    """Fast (default run): at least 30 mutants over the six student files, each edit applies
    to the reference exactly once, each expected row is a rubric row of the file's
    experiments, ids are unique."""
    assert len(CATALOGUE) >= 30
    files = {m["file"] for m in CATALOGUE}
    assert files <= set(mut.EXPERIMENT_MODULES) and len(files) >= 5, files
    ids = collections.Counter(m["id"] for m in CATALOGUE)
    assert all(n == 1 for n in ids.values()), ids
    patterns = {row[0] for row in LAB_RUBRIC}
    for m in CATALOGUE:
        assert m["rows"] and set(m["rows"]) <= patterns, m["id"]
        modules = {r.split("::")[0].split("/")[-1][:-3] for r in m["rows"]}
        assert modules <= set(mut.EXPERIMENT_MODULES[m["file"]]), m["id"]
        assert all(os.path.exists(os.path.join(mut.ROOT, p)) for p in m["public"]), m["id"]
        mut.apply(m, os.path.join(mut.ROOT, "stu_upload"), str(tmp_path / m["id"]))


def test_apply_refuses_an_ambiguous_edit(tmp_path):
    bad = dict(CATALOGUE[0], id="ambiguous", old="import")     # occurs many times
    with pytest.raises(ValueError, match="occurs"):
        mut.apply(bad, os.path.join(mut.ROOT, "stu_upload"), str(tmp_path / "x"))


@pytest.mark.mutants
def test_the_reference_loses_nothing(tmp_path):
    """Negative control for the runner: the reference itself (an edit that changes nothing)
    fails no public test of a file and loses no lab points."""
    noop = dict(CATALOGUE[0], id="noop", new=CATALOGUE[0]["old"], rows=[])
    result = mut.run_one(noop, str(tmp_path))
    assert result["lost"] == {} and result["problem"] == "no public test fails"


@pytest.mark.mutants
def test_every_mutant_fails_by_name_and_costs_its_row(tmp_path):
    results = mut.run_all(CATALOGUE, jobs=2, workdir=str(tmp_path))
    with open(tmp_path / "mutants.json", "w") as f:
        json.dump(results, f, indent=1)
    print(mut.table(results))
    failed = [f"{r['id']}: {r['problem']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
