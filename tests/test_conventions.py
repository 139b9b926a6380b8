"""Library-wide conventions, checked on the source: module boundaries, function length, the PRNG key's place.

* A module never uses another library module's private names (private
  modules such as ``_engine``, ``_checks``, ``_io`` are used whole).
* No library function is longer than 100 code lines (docstrings, comments
  and blank lines do not count).
* Every public function that takes a PRNG key takes it as the keyword-only
  argument ``key``; no public function takes ``seed`` or ``rng``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import tokenize
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxbound"
MODULES = sorted(p for p in PKG.glob("*.py"))
PUBLIC = [p.stem for p in MODULES if not p.stem.startswith("_")]
MAX_CODE_LINES = 100


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> jaxbound submodule, for ``from jaxbound import m as a`` and ``import jaxbound.m as a``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "jaxbound":
            for a in node.names:
                out[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxbound.") and a.asname:
                    out[a.asname] = a.name.split(".", 1)[1]
    return out


def private_uses(path: Path) -> list[str]:
    """``module._name`` uses of a public sibling module's private names in ``path``."""
    tree = _tree(path)
    aliases = _module_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            mod = aliases.get(node.value.id)
            if mod and not mod.startswith("_") and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.name}:{node.lineno} {mod}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxbound."):
            mod = node.module.split(".", 1)[1]
            if not mod.startswith("_"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.name}:{node.lineno} {mod}.{a.name}")
    return found


def code_lines(source: str, node: ast.AST) -> int:
    """Lines of ``node`` that hold code: no blank lines, comments or docstrings."""
    lines = set()
    doc_lines = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = sub.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    seg = ast.get_source_segment(source, node, padded=True) or ""
    first = node.lineno
    for tok in tokenize.generate_tokens(io.StringIO(seg).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            continue
        for ln in range(tok.start[0], tok.end[0] + 1):
            lines.add(first + ln - 1)
    if getattr(node, "decorator_list", None):
        lines -= set(range(node.decorator_list[0].lineno, node.lineno))
    return len(lines - doc_lines)


def long_functions(path: Path) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = code_lines(source, node)
            if n > MAX_CODE_LINES:
                out.append(f"{path.name}:{node.lineno} {node.name} ({n} code lines)")
    return out


def test_code_line_counter_counts_code_only():
    src = 'def f(a):\n    """Doc\n\n    more doc.\n    """\n    # comment\n\n    x = (a +\n         1)\n    return x\n'
    node = ast.parse(src).body[0]
    assert code_lines(src, node) == 4  # def line, two lines of x = ..., return


def test_private_use_detector_finds_a_use(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from jaxbound import attacks as A, _engine\nA._execute\n_engine.run\nA.pgd\n")
    assert private_uses(p) == ["m.py:2 attacks._execute"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_names_of_other_modules(path):
    assert private_uses(path) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_function_longer_than_100_code_lines(path):
    assert long_functions(path) == []


def _public_functions():
    for name in PUBLIC:
        if name in ("cli",):  # the command line takes a --seed integer by design
            continue
        mod = importlib.import_module(f"jaxbound.{name}")
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if inspect.isfunction(obj):
                yield f"{name}.{attr}", obj


@pytest.mark.parametrize("qualname,fn", list(_public_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_key_is_keyword_only(qualname, fn):
    params = inspect.signature(fn).parameters
    assert "seed" not in params and "rng" not in params, qualname
    if "key" in params:
        assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY, qualname
