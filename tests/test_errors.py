"""The library's errors: stable SchemaError rule codes, and every ConfigError names owner, parameter and value."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from refundguard.errors import SCHEMA_RULES, ConfigError, SchemaError

PKG = Path(__file__).resolve().parents[1] / "refundguard"


def _calls(name: str):
    """(path, call node) for every call whose callee is ``name`` or ``*.name`` in the package."""
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                callee = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if callee == name:
                    yield path.relative_to(PKG), node


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_every_rule_code_in_the_package_is_documented():
    used: dict[str, str] = {}
    for path, call in _calls("SchemaError"):
        for kw in call.keywords:
            if kw.arg == "rule" and _literal(kw.value) is not None:  # others pass a checked code through
                used[_literal(kw.value)] = f"{path}:{call.lineno}"
    for fn, pos in (("reject", 2), ("_schema", 2)):  # validate's rejects, the features' batch check
        for path, call in _calls(fn):
            if len(call.args) > pos:
                code = _literal(call.args[pos])
                if code is not None:
                    used[code] = f"{path}:{call.lineno}"
    unknown = {c: where for c, where in used.items() if c not in SCHEMA_RULES}
    assert not unknown, unknown
    assert {"missing_column", "required", "type", "unique", "exists", "parent_rejected"} <= set(used)


def test_every_config_error_names_owner_parameter_and_value():
    bad = []
    for path, call in _calls("ConfigError"):
        given = {kw.arg for kw in call.keywords}
        if not {"owner", "field", "value"} <= given:
            bad.append(f"{path}:{call.lineno} lacks {sorted({'owner', 'field', 'value'} - given)}")
    assert not bad, bad


def test_config_error_invalid_is_scikit_learn_style():
    e = ConfigError.invalid("PolicyConfig", "gate", "a float in [0.0, 5.0]", 48)
    assert str(e) == "The 'gate' parameter of PolicyConfig must be a float in [0.0, 5.0]. Got 48 instead."
    assert (e.owner, e.field, e.value) == ("PolicyConfig", "gate", 48)
    assert isinstance(e, ValueError)


def test_rules_are_documented_in_words():
    assert all(isinstance(v, str) and v for v in SCHEMA_RULES.values())
    with pytest.raises(SchemaError) as e:
        raise SchemaError("x", rule="missing_column")
    assert e.value.rule in SCHEMA_RULES
