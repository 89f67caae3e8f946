"""A small evaluator for the part of CEL our CRDs' x-kubernetes-validations use, written from the CEL spec
(github.com/google/cel-spec, langdef.md), independent of the operator's Python checks it is compared with.

Supported: int, string and bool literals, `self` and field selection, `has(x.f)`, `!`, unary `-`, `* / %`,
`+ -` (ints, string concatenation), `< <= > >= == !=`, `in` (map keys), `&&`, `||` (commutative: an error on
one side is absorbed when the other side decides), `c ? a : b`, parentheses. Int `/` and `%` truncate
toward zero, as CEL's do; a missing field or a division by zero is an error (CelError), as in CEL.
Anything else fails to parse, so a rule using more of CEL makes the test say so rather than guess.

`apply_defaults` applies an OpenAPI schema's `default`s the way the API server does before it evaluates
the rules (a missing property with a default gets it, inside objects that are present).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TOKEN = re.compile(r"\s*(?:(?P<int>\d+)|(?P<str>'[^']*')|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>\|\||&&|==|!=|<=|>=|[-+*/%<>!().?:]))")


class CelError(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SyntaxError(f"cannot read CEL at {text[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent in CEL's precedence order; builds nested tuples."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def take(self, value: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks) or (value is not None and self.toks[self.i][1] != value):
            raise SyntaxError(f"expected {value!r} at token {self.i}: {self.toks[self.i:]!r}")
        self.i += 1
        return self.toks[self.i - 1]

    def parse(self) -> Any:
        node = self.ternary()
        if self.i != len(self.toks):
            raise SyntaxError(f"unexpected {self.toks[self.i:]!r}")
        return node

    def ternary(self) -> Any:
        cond = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            yes = self.ternary()
            self.take(":")
            return ("?:", cond, yes, self.ternary())
        return cond

    LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Any:
        if level == len(self.LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in self.LEVELS[level]:
            op = self.take()[1]
            node = (op, node, self.binary(level + 1))
            if level == 2:  # relations do not chain
                break
        return node

    def unary(self) -> Any:
        if self.peek() in ("!", "-"):
            op = self.take()[1]
            return ("neg" if op == "-" else "!", self.unary())
        return self.member()

    def member(self) -> Any:
        node = self.primary()
        while self.peek() == ".":
            self.take(".")
            kind, name = self.take()
            if kind != "id":
                raise SyntaxError(f"field name expected, got {name!r}")
            node = (".", node, name)
        return node

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "int":
            return ("lit", int(value))
        if kind == "str":
            return ("lit", value[1:-1])
        if value in ("true", "false"):
            return ("lit", value == "true")
        if value == "self":
            return ("self",)
        if value == "has":
            self.take("(")
            arg = self.member()
            self.take(")")
            if arg[0] != ".":
                raise SyntaxError("has() needs a field selection")
            return ("has", arg)
        if value == "(":
            node = self.ternary()
            self.take(")")
            return node
        raise SyntaxError(f"unsupported CEL: {value!r}")


def _truncated_div(a: int, b: int) -> int:
    if b == 0:
        raise CelError("division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _eval(node: Any, self_obj: Any) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "self":
        return self_obj
    if op == ".":
        obj = _eval(node[1], self_obj)
        if not isinstance(obj, Mapping) or node[2] not in obj:
            raise CelError(f"no such key: {node[2]}")
        return obj[node[2]]
    if op == "has":
        obj = _eval(node[1][1], self_obj)
        if not isinstance(obj, Mapping):
            raise CelError("has() on a non-object")
        return node[1][2] in obj
    if op == "!":
        return not _bool(_eval(node[1], self_obj))
    if op == "neg":
        return -_eval(node[1], self_obj)
    if op == "?:":
        return _eval(node[2] if _bool(_eval(node[1], self_obj)) else node[3], self_obj)
    if op in ("||", "&&"):
        decisive = op == "||"
        error = None
        for side in (node[1], node[2]):
            try:
                if _bool(_eval(side, self_obj)) == decisive:
                    return decisive
            except CelError as err:
                error = err
        if error is not None:
            raise error
        return not decisive
    a, b = _eval(node[1], self_obj), _eval(node[2], self_obj)
    if op == "in":
        if not isinstance(b, Mapping):
            raise CelError("'in' needs a map here")
        return a in b
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    if type(a) is not type(b) or isinstance(a, bool):
        raise CelError(f"no such overload: {type(a).__name__} {op} {type(b).__name__}")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "+":
        return a + b
    if not isinstance(a, int):
        raise CelError(f"no such overload: {type(a).__name__} {op}")
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return _truncated_div(a, b)
    if op == "%":
        return a - b * _truncated_div(a, b)
    raise SyntaxError(op)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError(f"expected a bool, got {value!r}")
    return value


def evaluate(rule: str, self_obj: Any) -> bool:
    """The rule's value for `self`; CelError when CEL would report an evaluation error."""
    return _bool(_eval(_Parser(rule).parse(), self_obj))


def apply_defaults(schema: Mapping[str, Any], obj: Any) -> Any:
    """`obj` with the schema's defaults filled in, as the API server defaults a custom resource."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        return obj
    out = dict(obj)
    for name, prop in (schema.get("properties") or {}).items():
        if name not in out and "default" in prop:
            out[name] = prop["default"]
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out
