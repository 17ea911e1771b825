"""The library's shape: imports go downward only, each name is defined once, functions stay short.

The import graph is read from the source (``support.imports``): every import statement counts, at module
level, inside a function, or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import get_args

from support import imports

from sendit.deid.outcome import State
from sendit.store.vocabulary import BatchState, FileState

ROOT = imports.ROOT
LIBRARY = ROOT / "shared" / "sendit"
DISPATCH = "sendit.app.runtime"
# Owned by the de-identification engine (issue 10): its internals are not restructured here.
ENGINE = LIBRARY / "deid"
STATE_NAMES = {str(s) for s in FileState} | {str(s) for s in BatchState}


def _library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_library_has_no_import_cycle() -> None:
    edges = imports.graph()
    assert len(edges) > 40 and sum(len(t) for t in edges.values()) > 100  # the walk saw the library
    assert imports.cycles(edges) == []


def test_the_walk_counts_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    """A cycle closed only by a function-local import, or only by a TYPE_CHECKING one, is still found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import X\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import Y\nX = 1\n"
    )
    (pkg / "d.py").write_text("from . import e\n")
    (pkg / "e.py").write_text("def g():\n    import pkg.d\n")
    edges = imports.graph(imports.module_files(tmp_path, "pkg"))
    assert imports.cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e"]]


def test_only_functions_main_imports_the_dispatch_module() -> None:
    main = ROOT / "functions" / "main.py"
    assert DISPATCH in imports.imported_names(main, "main")
    others = [p for p in (ROOT / "functions").rglob("*.py") if p != main]
    others += (
        _library_files() + sorted((ROOT / "bench").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    )
    offenders = []
    for path in others:
        names = imports.imported_names(path, _module_name(path), path.name == "__init__.py")
        if DISPATCH in names:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "shared"):
        parts = list(path.relative_to(ROOT / "shared").with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return path.stem


def test_only_the_dispatch_module_imports_the_stages() -> None:
    edges = imports.graph()
    importers = {m for m in imports.importers(edges, "sendit.stages") if not m.startswith("sendit.stages")}
    assert importers == {DISPATCH}
    stage_imports = {t for m in edges if m.startswith("sendit.stages.") for t in edges[m]}
    assert not [t for t in stage_imports if t.startswith(("sendit.stages.", DISPATCH, "sendit.http"))]


def test_store_functions_take_a_store_first_and_keywords_after() -> None:
    checked = []
    for path in sorted((LIBRARY / "store").glob("*.py")):
        for node in _tree(path).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            params = [a.arg for a in node.args.posonlyargs + node.args.args]
            if params[:1] == ["store"]:
                checked.append(node.name)
                assert params == ["store"], f"{path.name}:{node.name} takes {params[1:]} positionally"
    assert {"claim_file", "settle_fields", "request_send", "public_files", "read"} <= set(checked)


def test_http_statuses_are_chosen_at_the_http_edge_only() -> None:
    """Only sendit.http (and the dispatch, for its types) knows Flask; no other module builds a response."""
    edges = imports.graph()
    for path in _library_files():
        module = _module_name(path)
        names = imports.imported_names(path, module, path.name == "__init__.py")
        if any(n == "flask" or n.startswith("flask.") for n in names):
            assert module.startswith("sendit.http") or module == DISPATCH, module
    assert imports.importers(edges, "sendit.http.responses") <= {
        "sendit.http.send_api",
        "sendit.http.status_api",
        "sendit.http.reprocess_api",
    }


def test_each_class_is_defined_once() -> None:
    """One definition of each error class, claim, context...: no two library classes share a name."""
    where: dict[str, list[str]] = {}
    for path in _library_files():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(str(path.relative_to(LIBRARY)))
    duplicates = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert duplicates == {}


def test_every_error_class_outside_the_engine_lives_in_errors() -> None:
    # Beside errors.py: the HTTP edge's BadRequest, the command-line side's own errors (remote's
    # OperatorError; upload's UsageError and its private _Mismatch signal), the local twin's StackError,
    # and the DICOMweb client's hierarchy (its API; the deliver stage classifies it through is_transient).
    allowed = {
        LIBRARY / "errors.py",
        LIBRARY / "http" / "responses.py",
        LIBRARY / "cli" / "remote.py",
        LIBRARY / "upload.py",
        LIBRARY / "local" / "emulators.py",
        LIBRARY / "dicomweb.py",
    }
    found = []
    for path in _library_files():
        if path.is_relative_to(ENGINE) or path in allowed:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id == "LookupError")
                for b in node.bases
            ):
                found.append(f"{path.relative_to(LIBRARY)}:{node.name}")
    assert found == []


def test_state_names_are_spelled_once() -> None:
    """Outside store/vocabulary.py no library module spells a state name as a string."""
    spelled = []
    for path in _library_files():
        if path.is_relative_to(ENGINE) or path == LIBRARY / "store" / "vocabulary.py":
            continue
        tree = _tree(path)
        exported = {
            id(element)
            for node in tree.body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
            for element in ast.walk(node.value)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in STATE_NAMES and id(node) not in exported:
                spelled.append(f"{path.relative_to(LIBRARY)}:{node.lineno}: {node.value}")
    assert spelled == []
    # The engine's outcome states are file states.
    assert set(get_args(State)) <= {str(s) for s in FileState}


def test_keyed_and_derived_names_are_defined_in_naming_only() -> None:
    names = {
        "file_key",
        "batch_folder",
        "batch_id",
        "name_hash",
        "clean_object_name",
        "instance_object_name",
        "archive_object_name",
        "insert_id",
    }
    defined: dict[str, list[str]] = {}
    calls_keyed_digest = []
    for path in _library_files():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef) and node.name in names:
                defined.setdefault(node.name, []).append(str(path.relative_to(LIBRARY)))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "keyed_digest"
                and not path.is_relative_to(ENGINE)
            ):
                calls_keyed_digest.append(str(path.relative_to(LIBRARY)))
    assert defined == {name: ["naming.py"] for name in names}
    assert calls_keyed_digest == ["naming.py"]


def test_test_helpers_call_naming_instead_of_rederiving_names() -> None:
    """No test outside the engine's own re-derives a keyed name (keyed_digest) or a file key (sha256)."""
    tests = ROOT / "tests"
    rederived = []
    for path in sorted(tests.rglob("*.py")):
        if path.is_relative_to(tests / "unit" / "deid") or path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        if "keyed_digest(" in text or ".encode()).hexdigest()[:32]" in text:
            rederived.append(str(path.relative_to(tests)))
    assert rederived == []


def test_the_ten_longest_library_functions_are_under_60_lines() -> None:
    lengths = []
    for path in _library_files():  # the engine included
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = (node.end_lineno or node.lineno) - node.lineno + 1
                lengths.append((span, f"{path.relative_to(LIBRARY)}:{node.name}"))
    longest = sorted(lengths, reverse=True)[:10]
    assert len(longest) == 10
    assert [entry for entry in longest if entry[0] >= 60] == []


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files without packages (rootdir basenames): two of one name break collection."""
    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
