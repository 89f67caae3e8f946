"""Find the line where a field path is written in spec text, for validation errors.

Validation runs on resolved values, after parsing has thrown away positions; this small scanner
walks the text's `name {` / `}` nesting again so an error can say `spec.txt:42: train_config...`.
Best effort: a path that is not written in the file (a missing field) has no line.
"""

from __future__ import annotations

import re
from typing import Optional

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{}<>]|[A-Za-z_][\w]*|\n|[^\s]')


def find_line(text: str, path: str) -> Optional[int]:
    """1-based line of the first occurrence of dotted `path` (e.g. `train_config.lr_config.cosine`)."""
    want = path.split(".")
    stack: list[str] = []
    line = 1
    last_ident: Optional[str] = None
    for tok in _TOKEN.findall(text):
        if tok == "\n":
            line += 1
            continue
        if tok.startswith("#"):
            continue
        if tok in ("{", "<"):
            stack.append(last_ident or "")
            last_ident = None
            continue
        if tok in ("}", ">"):
            if stack:
                stack.pop()
            last_ident = None
            continue
        if re.fullmatch(r"[A-Za-z_]\w*", tok) and tok not in ("true", "false", "True", "False"):
            candidate = stack + [tok]
            if candidate == want:
                return line
            last_ident = tok
        elif tok == ":":
            continue
        else:
            # a value: only an identifier directly before "{" names a block
            pass
    return None
