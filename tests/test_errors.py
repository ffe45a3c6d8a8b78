"""Every exception of ctsync is drawn in the tree of `ctsync.errors`' docstring."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import ctsync
from ctsync import errors

PACKAGE = Path(ctsync.__file__).parent
EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def exception_classes() -> dict[str, Path]:
    """Each class of the package whose base is an exception (a builtin one, or one of
    these classes), by name: found from the source, so nothing is imported."""
    bases: dict[str, tuple[list[str], Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                bases[node.name] = (names, path)
    found: dict[str, Path] = {}
    changed = True
    while changed:
        changed = False
        for name, (names, path) in bases.items():
            if name not in found and any(b in EXCEPTIONS or b in found for b in names):
                found[name] = path
                changed = True
    return found


def test_every_exception_class_is_in_the_tree() -> None:
    found = exception_classes()
    assert {"CtsyncError", "WorkerError", "MappingError", "Break", "Terminated"} <= set(found)
    doc = errors.__doc__ or ""
    missing = sorted(name for name in found if name not in doc)
    assert missing == [], f"exceptions not drawn in ctsync.errors' tree: {missing}"


def test_what_a_person_can_act_on_is_defined_in_errors() -> None:
    """Only signals private to one module (drawn in the tree with it) live elsewhere."""
    elsewhere = {
        name: path.relative_to(PACKAGE).as_posix()
        for name, path in exception_classes().items()
        if path.name != "errors.py"
    }
    assert elsewhere == {
        "Break": "documents.py",
        "NotADocument": "documents.py",
        "_OutOfData": "documents.py",
        "_SignalDuringRead": "stopping.py",
        "Terminated": "__main__.py",
    }
