"""Course staff: build the student kit from the reference solution.

    python -m labkit.staff.kit --out student_kit/            # refuses a non-empty folder
    python -m labkit.staff.kit --out student_kit/ --force    # replace it

Every ``stu_upload/*.py`` is parsed for student regions::

        # === STUDENT BEGIN: task_id ===
        # hint: ...        <- kept in the kit
        solution lines     <- removed in the kit
        # === STUDENT END ===

Each region becomes its hint lines plus ``raise NotImplementedError("<task_id>: ...")`` at the
region's indentation. The markers are checked strictly (unpaired, nested, duplicate ids, a
region outside a function body, an empty region: an error naming file:line). After writing,
the kit is verified: no marker and no solution line left, every stub compiles and imports.

What ships is decided by the folder tree: ``stu_upload/`` (stubbed), ``labkit/runtime/``
(the runtime; not ``labkit/engine/`` or ``labkit/staff/``), the drivers, ``tests/`` (the
public tests and their recorded data; not ``tests_staff/`` or ``tests_hidden/``),
``models/README.md``, ``output/`` and a README for students. Test modules whose first lines
contain ``# labkit: staff-only`` are not copied either (a safety net).

Before the command succeeds, ``verify_kit`` checks the kit: no marker or solution line left,
stubs compile and import, and no answer anywhere outside the stubs (``labkit.staff.leaks``
calls every function the kit holds with each graded task's inputs and compares).
"""
import argparse
import ast
import io
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STU_PACKAGE = "stu_upload"
STAFF_ONLY_MARK = "# labkit: staff-only"
RUNTIME = "runtime"          # the one labkit sub-package that ships in the kit
KIT_LABKIT_INIT = ('''"""labkit: the support code of the lab (you do not edit it). labkit.runtime holds the
.mat reader, images, gradient checking, fixtures, the style-transfer loop and the pycnml
simulator. The course repository also has labkit.engine (a tuned convolution engine) and
labkit.staff (grading); they are not part of the student kit."""
''')
# root files that ship as they are: the legacy start-up hook and ``import pycnml`` for the
# original drivers (PYTHONPATH at the kit root), the Chinese quick start
KIT_ROOT_FILES = ("requirements.txt", "sitecustomize.py", "pycnml.py", "README.zh-CN.md",
                  "pycnml_api.md")     # pycnml_api.md: the calls vgg19_demo.py's hints cite
KIT_PYTEST_INI = "[pytest]\ntestpaths = tests\npythonpath = .\naddopts = -ra\n"

BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)# === STUDENT BEGIN: (?P<task>[A-Za-z_][A-Za-z0-9_]*) ===[ \t]*$")
END_RE = re.compile(r"^(?P<indent>[ \t]*)# === STUDENT END ===[ \t]*$")
LOOSE_RE = re.compile(r"STUDENT[ _-]*(BEGIN|END)", re.IGNORECASE)
HINT_RE = re.compile(r"^[ \t]*# ?hint\b", re.IGNORECASE)
# lines too common to tell whether a solution leaked into the kit
TRIVIAL_LINES = {"", "pass", "else:", "try:", "finally:", "return", "continue", "break", ")",
                 "]", "}", "),", "],", "},", "#"}


class KitError(Exception):
    """A problem with the student regions or the kit; the message names file:line."""


@dataclass
class Region:
    path: str               # file as given (for messages)
    task: str
    begin: int              # 1-based line numbers of the markers
    end: int
    indent: str
    hints: list = field(default_factory=list)       # hint lines, as written
    solution: list = field(default_factory=list)    # the removed lines, as written
    function: str = ""      # Class.method or function that holds the region

    @property
    def description(self):
        return (f"not implemented yet: write {self.function} in "
                f"{STU_PACKAGE}/{os.path.basename(self.path)}")


def _is_marker_like(line):
    return bool(LOOSE_RE.search(line)) and line.lstrip().startswith("#")


def _enclosing_functions(source):
    """[(first line, last line, qualified name)] of every function in ``source``."""
    tree = ast.parse(source)
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((child.lineno + 1, child.end_lineno, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    return found


def parse_regions(source, path="<source>"):
    """The student regions of one file's ``source``; raises KitError on any marker problem."""
    lines = source.splitlines()
    regions, current = [], None
    for no, line in enumerate(lines, 1):
        begin, end = BEGIN_RE.match(line), END_RE.match(line)
        if begin:
            if current is not None:
                raise KitError(f"{path}:{no}: nested STUDENT BEGIN '{begin['task']}' inside "
                               f"region '{current.task}' opened at line {current.begin}")
            if not begin["indent"]:
                raise KitError(f"{path}:{no}: region '{begin['task']}' is not inside a function "
                               f"body (the marker is not indented)")
            current = Region(path, begin["task"], no, 0, begin["indent"])
        elif end:
            if current is None:
                raise KitError(f"{path}:{no}: STUDENT END without a STUDENT BEGIN")
            if end["indent"] != current.indent:
                raise KitError(f"{path}:{no}: STUDENT END is indented differently from its "
                               f"BEGIN at line {current.begin} (region '{current.task}')")
            current.end = no
            if not any(s.strip() for s in current.solution):
                raise KitError(f"{path}:{current.begin}: region '{current.task}' is empty (no "
                               f"solution lines between the markers)")
            regions.append(current)
            current = None
        elif _is_marker_like(line):
            raise KitError(f"{path}:{no}: malformed student marker {line.strip()!r}; expected "
                           f"'# === STUDENT BEGIN: task_id ===' or '# === STUDENT END ==='")
        elif current is not None:
            (current.hints if HINT_RE.match(line) else current.solution).append(line)
    if current is not None:
        raise KitError(f"{path}:{current.begin}: STUDENT BEGIN '{current.task}' has no "
                       f"STUDENT END")
    seen = {}
    for r in regions:
        if r.task in seen:
            raise KitError(f"{path}:{r.begin}: duplicate task id '{r.task}' (also at line "
                           f"{seen[r.task]})")
        seen[r.task] = r.begin
    if regions:
        try:
            functions = _enclosing_functions(source)
        except SyntaxError as exc:
            raise KitError(f"{path}:{exc.lineno}: the reference does not parse: {exc.msg}")
        for r in regions:
            inside = [f for f in functions if f[0] <= r.begin and r.end <= f[1]]
            if not inside:
                raise KitError(f"{path}:{r.begin}: region '{r.task}' is not inside a function "
                               f"body")
            r.function = max(inside, key=lambda f: f[0])[2]      # the innermost one
    return regions


def stub_source(source, regions):
    """``source`` with every region replaced by its hints and a NotImplementedError."""
    lines = source.splitlines(keepends=True)
    out, skip_until = [], 0
    starts = {r.begin: r for r in regions}
    for no, line in enumerate(lines, 1):
        if no <= skip_until:
            continue
        region = starts.get(no)
        if region is None:
            out.append(line)
            continue
        ind = region.indent
        out.append(f"{ind}# TODO {region.task}: write your code here, in place of the "
                   f"raise below\n")
        out.extend(h if h.endswith("\n") else h + "\n" for h in region.hints)
        message = f"{region.task}: {region.description}"
        out.append(f"{ind}raise NotImplementedError({message!r})\n")
        skip_until = region.end
    return "".join(out)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def stu_files(root=ROOT):
    folder = os.path.join(root, STU_PACKAGE)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


def collect_regions(root=ROOT):
    """{file path: [Region]} for every stu_upload/*.py; task ids must be unique overall."""
    result, owner = {}, {}
    for path in stu_files(root):
        rel = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as f:
            regions = parse_regions(f.read(), rel)
        for r in regions:
            if r.task in owner:
                raise KitError(f"{rel}:{r.begin}: duplicate task id '{r.task}' (also in "
                               f"{owner[r.task]})")
            owner[r.task] = f"{rel}:{r.begin}"
        result[path] = regions
    return result


def is_staff_only(path):
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(2000)
    except OSError:
        return False
    return STAFF_ONLY_MARK in head


def _ignore(folder, names):
    return {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")}


def _copy(src, dst):
    if os.path.isdir(src):
        shutil.copytree(src, dst, ignore=_ignore)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def _public_manifest(src, dst):
    """Copy the grading manifest without the hidden tests' names (only their count/points)."""
    with open(src, encoding="utf-8") as f:
        manifest = json.load(f)
    tests = manifest.get("tests", {})
    hidden = {k: v for k, v in tests.items() if v.get("hidden")}
    manifest["tests"] = {k: v for k, v in tests.items() if not v.get("hidden")}
    if hidden:
        manifest["hidden_summary"] = {"count": len(hidden)}
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


def write_kit(out, root=ROOT, force=False, check_import=True):
    """Write the student kit to ``out``; returns {file: [Region]}. Raises KitError."""
    out = os.path.abspath(out)
    root = os.path.abspath(root)
    if root == out or root.startswith(out + os.sep) or out.startswith(
            os.path.join(root, STU_PACKAGE) + os.sep):
        raise KitError(f"refusing to write the kit to {out}: it would overwrite the reference")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not force:
            raise KitError(f"{out} exists and is not empty; pass --force to replace it")
        if os.path.exists(os.path.join(out, ".git")):
            raise KitError(f"refusing to replace {out}: it holds a git repository")
        shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
    regions = collect_regions(root)
    os.makedirs(out, exist_ok=True)

    # stu_upload: stubbed student files, other files as they are
    src_pkg, dst_pkg = os.path.join(root, STU_PACKAGE), os.path.join(out, STU_PACKAGE)
    _copy(src_pkg, dst_pkg)
    init = os.path.join(dst_pkg, "__init__.py")
    if os.path.exists(init):
        with open(init, encoding="utf-8") as f:
            text = f.read()
        with open(init, "w", encoding="utf-8") as f:
            f.write(text.replace("(reference implementation)", "(student kit)"))
    for path, file_regions in regions.items():
        if file_regions:
            with open(path, encoding="utf-8") as f:
                stub = stub_source(f.read(), file_regions)
            with open(os.path.join(dst_pkg, os.path.basename(path)), "w",
                      encoding="utf-8") as f:
                f.write(stub)

    # labkit: only the runtime package ships (the folder decides, not a list of files)
    _copy(os.path.join(root, "labkit", RUNTIME), os.path.join(out, "labkit", RUNTIME))
    with open(os.path.join(out, "labkit", "__init__.py"), "w", encoding="utf-8") as f:
        f.write(KIT_LABKIT_INIT)
    for name in sorted(os.listdir(root)):
        if re.fullmatch(r"main_exp_.*\.py", name) or name in KIT_ROOT_FILES:
            _copy(os.path.join(root, name), os.path.join(out, name))
    with open(os.path.join(out, "pytest.ini"), "w", encoding="utf-8") as f:
        f.write(KIT_PYTEST_INI)
    tests_src, tests_dst = os.path.join(root, "tests"), os.path.join(out, "tests")
    os.makedirs(tests_dst)
    for name in sorted(os.listdir(tests_src)):
        src = os.path.join(tests_src, name)
        if name in ("__pycache__",) or (name.endswith(".py") and is_staff_only(src)):
            continue
        if name == "grading_manifest.json":
            _public_manifest(src, os.path.join(tests_dst, name))
        else:
            _copy(src, os.path.join(tests_dst, name))
    # the public tests' expected values, recorded afresh from the reference (a subprocess:
    # recording imports the reference stu_upload, which must not replace the caller's)
    r = subprocess.run([sys.executable, "-m", "labkit.staff.record", "--out",
                        os.path.join(tests_dst, "data")], cwd=root, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": root})
    if r.returncode != 0:
        raise KitError(f"recording the tests' expected values failed: {r.stderr[-800:]}")
    os.makedirs(os.path.join(out, "models"))
    readme = os.path.join(root, "models", "README.md")
    if os.path.exists(readme):
        _copy(readme, os.path.join(out, "models", "README.md"))
    os.makedirs(os.path.join(out, "output"))
    open(os.path.join(out, "output", ".gitkeep"), "w").close()
    with open(os.path.join(out, ".gitignore"), "w") as f:
        f.write("__pycache__/\n*.pyc\n.pytest_cache/\n/.venv/\n/models/*\n!/models/README.md\n"
                "/output/*\n!/output/.gitkeep\n")
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(student_readme(regions, root))

    problems = verify_kit(out, regions, root, check_import=check_import)
    if problems:
        raise KitError("the kit failed verification:\n  " + "\n  ".join(problems))
    return regions


def _norm(line):
    return line.strip()


def removed_solution_lines(regions):
    """{normalised line: task} of the lines removed from the student regions (``regions``:
    {file path: [Region]}, as ``collect_regions`` gives) that are not trivial and that the
    reference does not also have outside every region (e.g. a shared idiom)."""
    outside, removed = set(), {}
    for path, file_regions in regions.items():
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        inside = set()
        for r in file_regions:
            inside.update(range(r.begin, r.end + 1))
            for s in r.solution:
                removed.setdefault(_norm(s), f"{r.task}")
        outside.update(_norm(l) for no, l in enumerate(lines, 1) if no not in inside)
    return {l: t for l, t in removed.items() if l not in TRIVIAL_LINES and l not in outside}


def verify_kit(out, regions=None, root=ROOT, check_import=True):
    """[problem] of the kit in ``out``: markers or solution lines left, stubs that do not
    compile or import. Empty when the kit is good."""
    regions = collect_regions(root) if regions is None else regions
    problems, texts = [], {}        # texts: {path: text} of the kit's .py files, read once
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            texts[path] = _read(path)
            for no, line in enumerate(io.StringIO(texts[path]), 1):
                if BEGIN_RE.match(line) or END_RE.match(line):
                    problems.append(f"{os.path.relpath(path, out)}:{no}: marker line left: "
                                    f"{line.strip()}")
    # solution lines: removed ones that are still there (unless the reference also has the
    # same line outside every region, e.g. a shared idiom)
    suspicious = removed_solution_lines(regions)
    kit_pkg = os.path.join(out, STU_PACKAGE)
    stub_modules = []
    for name in sorted(os.listdir(kit_pkg)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(kit_pkg, name)
        rel = os.path.relpath(path, out)
        if path not in texts:
            texts[path] = _read(path)
        for no, line in enumerate(io.StringIO(texts[path]), 1):
            task = suspicious.get(_norm(line))
            if task:
                problems.append(f"{rel}:{no}: solution line of task '{task}' left: "
                                f"{line.strip()}")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                py_compile.compile(path, cfile=os.path.join(tmp, "x.pyc"), doraise=True)
        except py_compile.PyCompileError as exc:
            problems.append(f"{rel}: does not compile: {exc.msg.strip()}")
        if name != "__init__.py":
            stub_modules.append(f"{STU_PACKAGE}.{name[:-3]}")
    expected = {r.task for rs in regions.values() for r in rs}
    text = "".join(texts[os.path.join(kit_pkg, name)] for name in os.listdir(kit_pkg)
                   if name.endswith(".py"))
    for task in sorted(expected):
        if f"raise NotImplementedError('{task}: " not in text:
            problems.append(f"task '{task}' has no NotImplementedError stub in the kit")
    if check_import and not problems:
        from labkit.staff.leaks import find_leaks
        problems += find_leaks(out, root, regions=regions)
    if check_import and not problems:
        code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
        r = subprocess.run([sys.executable, "-c", code, *stub_modules], cwd=out,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": out, "PYTHONDONTWRITEBYTECODE": "1"})
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            problems.append(f"the kit's {STU_PACKAGE} does not import: {last}")
    return problems


def student_readme(regions, root=ROOT):
    rows = []
    for path, file_regions in regions.items():
        for r in file_regions:
            rows.append(f"| `{STU_PACKAGE}/{os.path.basename(path)}` | `{r.function}` | "
                        f"`{r.task}` |")
    tasks = "\n".join(rows)
    drivers = ", ".join(f"`{n}`" for n in sorted(os.listdir(root))
                        if re.fullmatch(r"main_exp_.*\.py", n))
    return f"""# 智能计算系统 第三章实验 学生包 / AI Computing Systems, chapter 3: student kit

## 中文

**要做什么**：在 `{STU_PACKAGE}/` 中，每个 `raise NotImplementedError("<任务名>: ...")` 的位置
就是一个待完成的任务。把这一行换成你的实现（上方的 `# hint:` 注释是提示）。不要改函数签名、
文件名和 `labkit/`、`tests/` 中的代码。任务列表见下表。

**运行公开测试**：
```bash
python3 -m venv .venv && . .venv/bin/activate && python -m pip install -r requirements.txt
python -m pytest -q                 # 公开测试；未完成的任务显示 "NotImplementedError: <任务名>"
python -m pytest -q tests/test_layer_1.py       # 只测一个文件
```
实验程序：{drivers}（`--help` 查看参数；`python main_exp_3_1.py --demo` 无需权重文件）。

**如何评分**：提交整个 `{STU_PACKAGE}/` 文件夹（或其 zip）。助教用同一套测试加上**隐藏测试**
评分：每个测试有固定分数，通过得分，失败、超时（每个测试有时间限制）或无法导入得 0 分。
文件有语法错误时，只有依赖该文件的测试得 0 分。公开测试全部通过不等于满分。成绩分为 `lab`
（实验本身，按原版接口检查）和 `beyond`（本实验包的扩展）；原版文件名（`layers_1.py` 等）同样
有效。完整的中文快速入门见 `README.zh-CN.md`。

## English

**What to do**: in `{STU_PACKAGE}/`, each `raise NotImplementedError("<task_id>: ...")` marks one
task. Replace that line with your code (the `# hint:` comments above it help). Do not change
function signatures, file names, or anything in `labkit/` and `tests/`. The tasks are listed
below.

**Run the public tests**:
```bash
python3 -m venv .venv && . .venv/bin/activate && python -m pip install -r requirements.txt
python -m pytest -q                 # public tests; unfinished tasks fail with "NotImplementedError: <task_id>"
python -m pytest -q tests/test_layer_1.py       # one file only
```
Drivers: {drivers} (`--help` for options; `python main_exp_3_1.py --demo` needs no weights).

**How grading works**: hand in the whole `{STU_PACKAGE}/` folder (or a zip of it). The staff run
the same tests plus **hidden tests**: each test has fixed points, earned when it passes; a
failure, a time-out (every test has a time limit) or an import error scores 0. A file with a
syntax error costs only the tests that need it. Passing every public test is not a full score.
Points are `lab` (the lab itself, checked through the original kit's interface) or `beyond`
(this kit's extensions); the original kit's file names (`layers_1.py` ...) work too.

## Rubric / 评分表

The lab points of each experiment (100 each), as the hidden lab tests award them; a row's
points are shared by its test cases. 每个实验 100 分（`lab`），按下表分配：

| experiment / 实验 | what is checked / 检查内容 | points / 分值 |
|---|---|---|
{rubric_rows()}

`beyond` tests (this kit's extensions) add their own points. / `beyond` 测试另计分。

## Tasks / 任务

| file | function | task |
|---|---|---|
{tasks}
"""


def rubric_rows():
    """The LAB_RUBRIC table (labkit.staff.grading) as Markdown rows."""
    from labkit.staff.grading import LAB_RUBRIC
    rows = []
    for pattern, experiment, points in LAB_RUBRIC:
        test = pattern.split("::")[-1].rstrip("*").replace("test_", "", 1).replace("_", " ")
        rows.append(f"| {experiment} | {test} | {points:g} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description="Build the student kit from the reference "
                                "(student regions replaced by hints + NotImplementedError).")
    p.add_argument("--out", help="output folder (must be empty or missing)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--check", action="store_true",
                   help="only parse and check the student regions; write nothing")
    args = p.parse_args(argv)
    if not args.check and not args.out:
        p.error("--out is required (or --check)")
    try:
        if args.check:
            regions = collect_regions()
        else:
            regions = write_kit(args.out, force=args.force)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(len(r) for r in regions.values())
    files = sum(1 for r in regions.values() if r)
    if args.check:
        print(f"{n} student regions in {files} files: markers OK")
    else:
        print(f"student kit written to {args.out}: {n} tasks stubbed in {files} files; "
              f"verified (no markers or solution lines left, stubs compile and import, no "
              f"working answer found outside the stubs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
