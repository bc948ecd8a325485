"""labkit/runtime/student.py: the student's modules by either naming, resolved lazily."""
import hashlib
import os
import shutil

import pytest

from labkit.runtime import student
from labkit.runtime.student import lazy, stu
from labkit.staff._stu_site.sitecustomize import install

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def folder(tmp_path):
    pkg = tmp_path / "stu_upload"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    yield pkg
    install(os.path.join(ROOT, "stu_upload"))      # the reference again for other tests


def test_original_names_and_fallback_attributes(folder):
    (folder / "layers_1.py").write_text("class ReLULayer:\n    ORIGIN = 'layers_1'\n")
    (folder / "layers_3.py").write_text("class ContentLossLayer:\n    pass\n")
    (folder / "exp_3_3_style_transfer.py").write_text(
        "class AdamOptimizer:\n    ORIGIN = 'exp_3_3'\n\ndef get_random_img(c, n):\n    return n\n")
    install(str(folder))
    assert stu.layer_1.ReLULayer.ORIGIN == "layers_1"
    assert stu.layer_3.AdamOptimizer.ORIGIN == "exp_3_3"        # the original keeps Adam there
    assert stu.style_transfer.get_random_img(None, 3) == 3
    assert student.experiments_present(str(folder)) == {"3.1": True, "3.2": False, "3.3": True}
    with pytest.raises(student.StudentModuleMissing, match="vgg19_demo.py"):
        stu.vgg19_demo.VGG19
    with pytest.raises(AttributeError, match="has no 'Nope'"):
        stu.layer_1.Nope


def test_alias_files_are_skipped_and_our_names_win(folder):
    (folder / "layer_1.py").write_text("class ReLULayer:\n    ORIGIN = 'layer_1'\n")
    for name in ("layers_1.py", "layers_2.py"):          # this kit's alias files
        shutil.copy(os.path.join(ROOT, "stu_upload", name), folder / name)
    install(str(folder))
    assert student.module_file("layer_1", str(folder)) == "layer_1"
    assert stu.layer_1.ReLULayer.ORIGIN == "layer_1"
    assert not student.present("layer_2", str(folder))          # an alias alone is no file
    # a student's original file dropped over the alias is found
    (folder / "layer_1.py").unlink()
    (folder / "layers_1.py").write_text("class ReLULayer:\n    ORIGIN = 'layers_1'\n")
    install(str(folder))
    assert stu.layer_1.ReLULayer.ORIGIN == "layers_1"


def test_a_syntax_error_costs_only_its_module(folder):
    (folder / "layer_1.py").write_text("class ReLULayer:\n    pass\n")
    (folder / "layer_2.py").write_text("def broken(:\n")
    install(str(folder))
    relu = lazy("layer_1", "ReLULayer")       # naming it costs nothing until called
    conv = lazy("layer_2", "ConvolutionalLayer")
    assert type(relu()).__name__ == "ReLULayer"
    with pytest.raises(SyntaxError):
        conv(3, 1, 1, 0, 1)


def test_alias_mark_counts_only_on_the_kits_own_alias_files(folder):
    """A student file that carries the alias mark is still the student's file: the
    experiment counts as submitted (percent divides by its points)."""
    (folder / "layer_1.py").write_text('"""labkit: alias of stu_upload.layers_1"""\n'
                                       "class ReLULayer:\n    pass\n")
    (folder / "layers_1.py").write_text("# labkit: alias of stu_upload.layer_1\n")
    assert student.present("layer_1", str(folder))
    assert student.experiments_present(str(folder))["3.1"]
    shutil.copy(os.path.join(ROOT, "stu_upload", "layers_2.py"), folder / "layers_2.py")
    assert not student.present("layer_2", str(folder))


def test_alias_sha256_lists_every_alias_file_of_the_kit():
    """When an alias file changes, update labkit.runtime.student.ALIAS_SHA256 with its hash."""
    folder = os.path.join(ROOT, "stu_upload")
    found = set()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        if student.ALIAS_MARK.encode() in data[:400]:
            found.add(hashlib.sha256(data).hexdigest())
    assert found == set(student.ALIAS_SHA256), "update student.ALIAS_SHA256"
