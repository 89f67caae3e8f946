"""status/reasons.py is the only place the operator spells a reason it writes: every reason written into a
status, a condition or an Event elsewhere is one of its constants (or comes from Kubernetes, mirrored)."""

from __future__ import annotations

import ast
from pathlib import Path

import kestrel_operator
from kestrel_operator.status import reasons

PACKAGE = Path(kestrel_operator.__file__).resolve().parent
# Calls that write a reason, and the position of the reason among their arguments.
REASON_ARGUMENT = {"Cause": 0, "Phase": 1, "_base": 2, "condition": 2, "set_condition": 3, "waiting_status": 2,
                   "error_status": 2, "_event": 3, "post_event": 2}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _literal(node: ast.expr | None) -> bool:
    """A reason spelled in place: a non-empty string, or an f-string."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value != "") or isinstance(
        node, ast.JoinedStr)


def reason_literals(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            where = REASON_ARGUMENT.get(_name(node.func))
            args = [node.args[where]] if where is not None and len(node.args) > where else []
            args += [k.value for k in node.keywords if k.arg == "reason"]
            found += [f"{filename}:{a.lineno}" for a in args if _literal(a)]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_name(t) == "reason" for t in targets) and _literal(node.value):
                found.append(f"{filename}:{node.lineno}")
        elif isinstance(node, ast.Dict):
            found += [f"{filename}:{v.lineno}" for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "reason" and _literal(v)]
    return found


def test_reasons_are_written_only_through_the_constants():
    written = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() != Path(reasons.__file__).resolve():
            written += reason_literals(path.read_text(), str(path.relative_to(PACKAGE)))
    assert written == []


def test_the_check_sees_a_literal_reason_in_each_form():
    source = ('Cause("Oops", "m")\nPhase(p, "Oops", m)\nself._event(b, o, "Warning", "Oops", m)\n'
              'x = {"reason": "Oops"}\nwaiting_status(o, g, reason=f"{w}", message=m)\n'
              'class E:\n    reason = "Oops"\nCause(r.UNSCHEDULABLE, "m")\n')
    assert reason_literals(source, "s.py") == ["s.py:1", "s.py:2", "s.py:3", "s.py:4", "s.py:5", "s.py:7"]
