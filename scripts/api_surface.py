"""A Python module's API surface, read from its source (never imported).

Each top-level name and each class member ("Class.member") gets its kind (class, def,
async def, property, value, import) and, for functions, its parameter names. Two versions of a
module are compatible for a caller when every name it uses has the same kind in both and keeps
its parameters (new ones may be added): an `async def` that was a `def`, a missing name or a
renamed parameter is not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Symbol:
    kind: str
    params: tuple[str, ...] = ()

    def keeps(self, reference: Symbol) -> bool:
        """Usable where `reference` was: the same kind, none of its parameters gone."""
        return self.kind == reference.kind and set(reference.params) <= set(self.params)

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self.params)})" if self.kind.endswith("def") else self.kind


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        names.append(f"*{a.vararg.arg}")
    names += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        names.append(f"**{a.kwarg.arg}")
    return tuple(names)


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Symbol:
    decorators = {_name(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
    if decorators & {"property", "cached_property"}:
        return Symbol("property")
    kind = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return Symbol(kind, _params(node))


def _flat(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements, with those of `if`/`try` blocks (TYPE_CHECKING, optional imports) inlined."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _flat([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            yield from _flat([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                yield from _flat(handler.body)
        else:
            yield node


def _targets(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _defined(body: Iterable[ast.stmt]) -> dict[str, Symbol]:
    names: dict[str, Symbol] = {}
    for node in _flat(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = _function(node)
        elif isinstance(node, ast.ClassDef):
            names[node.name] = Symbol("class")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = Symbol("import")
        else:
            names.update(dict.fromkeys(_targets(node), Symbol("value")))
    return names


def _members(cls: ast.ClassDef) -> dict[str, Symbol]:
    members = _defined(cls.body)
    for node in ast.walk(cls):  # attributes set in methods: self.model_config = ...
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            members.setdefault(node.attr, Symbol("value"))
    return members


def surface(source: str) -> dict[str, Symbol]:
    tree = ast.parse(source)
    names = _defined(tree.body)
    classes = {n.name: n for n in _flat(tree.body) if isinstance(n, ast.ClassDef)}

    def members(name: str, seen: frozenset[str] = frozenset()) -> dict[str, Symbol]:
        cls = classes[name]
        merged: dict[str, Symbol] = {}
        for base in cls.bases:  # bases of the same module; others are not followed
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                merged.update(members(base.id, seen | {name}))
        merged.update(_members(cls))
        return merged

    for name in classes:
        names.update({f"{name}.{member}": s for member, s in members(name).items()})
    return names


def incompatibilities(reference: str, other: str, used: Iterable[str]) -> list[str]:
    """Names of `used` that `other` lacks or defines differently from `reference`."""
    ours, theirs = surface(reference), surface(other)
    problems = []
    for name in sorted(set(used)):
        if name not in ours:
            problems.append(f"{name}: not in the reference either (the list of names is stale)")
        elif name not in theirs:
            problems.append(f"{name}: missing")
        elif not theirs[name].keeps(ours[name]):
            problems.append(f"{name}: {theirs[name]}, where the reference has {ours[name]}")
    return problems
