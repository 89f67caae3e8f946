"""Where each field is written in spec text, walked with the schema: for messages protobuf's parser has no
place for (a scalar written twice, a second member of a oneof, the field an enum or type error is about).

protobuf's `text_format.Merge` (what the original reads specs with) accepts a non-repeated scalar written twice
(the last value wins), merges a message block written twice, and lets a second member of a oneof replace the
first. It says nothing about it; `duplicate_warnings` does, naming both lines. Runs on text protobuf has
already parsed, so the token stream is well formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from google.protobuf import descriptor

from kestrel_trainer.spec.proto import experiment_pb2

_FD = descriptor.FieldDescriptor
_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<comment>\#[^\n]*)
      |(?P<nl>\n)
      |(?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fFuU]?)
      |(?P<ident>[A-Za-z_]\w*)
      |(?P<punct>[{}<>\[\]:,;-])
      |(?P<space>[ \t\r\f\v]+)
      |(?P<other>.)""",
    re.X,
)


@dataclass(frozen=True)
class Occurrence:
    """A field name written in the text: its dotted path, 1-based line and column."""

    path: str
    line: int
    column: int


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int
    column: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    line, line_start = 1, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind == "nl":
            line, line_start = line + 1, m.end()
            continue
        if kind in ("space", "comment"):
            continue
        out.append(_Tok(kind, m.group(), line, m.start() - line_start + 1))
    return out


def _is_map(fd: descriptor.FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _real_oneof(fd: descriptor.FieldDescriptor) -> Optional[str]:
    # proto3 `optional` scalars sit in synthetic one-field oneofs; only message members are real choices here
    if fd.containing_oneof is not None and fd.message_type is not None:
        return fd.containing_oneof.name
    return None


class _Walk:
    """One pass over the tokens: every field occurrence, plus what Merge silently overrides."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.occurrences: list[Occurrence] = []
        self.warnings: list[str] = []
        # per merged scope (dotted path of a non-repeated message): scalar name -> first line; oneof -> (member, line)
        self.scalars: dict[str, dict[str, int]] = {}
        self.oneofs: dict[str, dict[str, tuple[str, int]]] = {}
        self.n_scopes = 0

    def peek(self) -> Optional[_Tok]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def run(self) -> None:
        self.block(experiment_pb2.Experiment.DESCRIPTOR, "", "", closer=None)

    def block(self, desc: descriptor.Descriptor, path: str, scope: str, closer: Optional[str]) -> None:
        while (tok := self.peek()) is not None:
            if tok.text == closer:
                self.i += 1
                return
            if tok.kind != "ident":
                self.i += 1  # separators (`,` `;`) and anything protobuf accepted that we need not follow
                continue
            self.i += 1
            fd = desc.fields_by_name.get(tok.text)
            field_path = f"{path}.{tok.text}" if path else tok.text
            self.occurrences.append(Occurrence(field_path, tok.line, tok.column))
            nxt = self.peek()
            if nxt is not None and nxt.text == ":":
                self.i += 1
                nxt = self.peek()
            if nxt is not None and nxt.text in ("{", "<"):
                self.i += 1
                self.message(fd, field_path, scope, tok, closer="}" if nxt.text == "{" else ">")
            elif nxt is not None and nxt.text == "[":
                self.i += 1
                self.list_value(fd, field_path, scope, tok)
            else:
                self.scalar_value()
                if fd is not None and fd.label != _FD.LABEL_REPEATED:
                    self.note_scalar(scope, field_path, tok)

    def message(self, fd: Optional[descriptor.FieldDescriptor], path: str, scope: str, tok: _Tok,
                closer: str) -> None:
        if fd is None or fd.message_type is None:
            self.skip_block(closer)
            return
        if fd.label == _FD.LABEL_REPEATED or _is_map(fd):
            self.n_scopes += 1  # every entry of a repeated message or map is its own message
            inner = f"{path}#{self.n_scopes}"
        else:
            oneof = _real_oneof(fd)
            if oneof is not None:
                self.note_oneof(scope, path, oneof, fd.name, tok)
            inner = path
        self.block(fd.message_type, path, inner, closer)

    def list_value(self, fd: Optional[descriptor.FieldDescriptor], path: str, scope: str, tok: _Tok) -> None:
        while (t := self.peek()) is not None and t.text != "]":
            if t.text in ("{", "<") and fd is not None and fd.message_type is not None:
                self.i += 1
                self.message(fd, path, scope, tok, closer="}" if t.text == "{" else ">")
            else:
                self.i += 1
        self.i += 1

    def scalar_value(self) -> None:
        tok = self.peek()
        if tok is not None and tok.text == "-":
            self.i += 1
            tok = self.peek()
        if tok is None:
            return
        self.i += 1
        while tok.kind == "str" and (nxt := self.peek()) is not None and nxt.kind == "str":
            self.i += 1  # adjacent strings concatenate: "a" "b" is one value

    def skip_block(self, closer: str) -> None:
        depth = 1
        while (tok := self.peek()) is not None and depth:
            self.i += 1
            if tok.text in ("{", "<"):
                depth += 1
            elif tok.text in ("}", ">"):
                depth -= 1

    def note_scalar(self, scope: str, path: str, tok: _Tok) -> None:
        seen = self.scalars.setdefault(scope, {})
        name = path.rpartition(".")[2]
        if name in seen:
            self.warnings.append(
                f"{tok.line}: {path}: written twice (lines {seen[name]} and {tok.line}); the value on line "
                f"{tok.line} is used, as the original's text_format.Merge does")
        seen[name] = tok.line

    def note_oneof(self, scope: str, path: str, oneof: str, member: str, tok: _Tok) -> None:
        chosen = self.oneofs.setdefault(scope, {})
        if oneof in chosen and chosen[oneof][0] != member:
            old, old_line = chosen[oneof]
            parent = path.rpartition(".")[0]
            self.warnings.append(
                f"{tok.line}: {parent}: {member} (line {tok.line}) replaces {old} (line {old_line}), another choice "
                f"of the same oneof; {old}'s values are dropped, as the original's text_format.Merge does")
            # the replaced member is cleared: what it held no longer counts as written
            dropped = f"{parent}.{old}"
            for key in [k for k in self.scalars if k == dropped or k.startswith(dropped + ".")]:
                del self.scalars[key]
            for key in [k for k in self.oneofs if k == dropped or k.startswith(dropped + ".")]:
                del self.oneofs[key]
        chosen[oneof] = (member, tok.line)


def scan(text: str) -> tuple[list[Occurrence], list[str]]:
    """(every field occurrence in file order, warnings 'LINE: path: what' for what Merge overrides)."""
    walk = _Walk(text)
    walk.run()
    return walk.occurrences, walk.warnings


def field_at(text: str, line: int, column: int) -> Optional[str]:
    """The dotted path of the field whose name is written last before (line, column): what a value error is
    about (protobuf points at the value, after the field's name)."""
    try:
        occurrences, _ = scan(text)
    except Exception:  # noqa: BLE001 - text protobuf rejected may not walk; the error then has no field
        return None
    best = None
    for occ in occurrences:
        if (occ.line, occ.column) <= (line, column):
            best = occ.path
    return best
