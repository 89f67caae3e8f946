"""Text format -> protobuf `Experiment`, with errors a user can act on.

Read with `text_format.Merge`, as the original reads its specs: a scalar written twice keeps the last value
and a second member of a oneof (`adam` after `sgd`) replaces the first; both are accepted with a warning
naming the lines (`scan.py`).

protobuf's own messages say `3:2 : Message type "kestrel.spec.ModelConfig" has no field named "archh".`;
we turn that into `spec.txt:3:2: model_config has no field "archh" (did you mean "arch"?)`, and a value of the
wrong type or enum into `spec.txt:5:32: model_config.resize_interpolation_method: NEAREST is not one of ...`.
"""

from __future__ import annotations

import difflib
import re

from google.protobuf import descriptor, text_format

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec.proto import experiment_pb2
from kestrel_trainer.spec.scan import field_at, scan

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_ENUM_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')
# protobuf's value errors, which follow the field's name on the same line: "'<the line>': <what is wrong>"
_VALUE_ERROR = re.compile(r"^'(?P<quoted>.*)': (?P<what>(?:Couldn't parse|Expected \"true\"|Enum type|Expected string"
                          r"|Expected integer|Expected identifier|Integer out of range|Invalid ).*)$", re.S)


def _message_paths() -> dict[str, str]:
    """Full proto message name -> the spec path users see (`kestrel.spec.CosineLrConfig` -> `...cosine`)."""
    paths: dict[str, str] = {}

    def walk(desc: descriptor.Descriptor, path: str) -> None:
        paths.setdefault(desc.full_name, path or "top level")
        for fd in desc.fields:
            if fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
                walk(fd.message_type, f"{path}.{fd.name}" if path else fd.name)

    walk(experiment_pb2.Experiment.DESCRIPTOR, "")
    return paths


def _field_names(full_name: str) -> list[str]:
    from google.protobuf import descriptor_pool

    desc = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return [fd.name for fd in desc.fields]


def _explain(raw: str) -> str:
    """Rewrite protobuf's wording into our one-line style, adding the nearest valid name."""
    m = _UNKNOWN_FIELD.search(raw)
    if m:
        full_name, bad = m.groups()
        where = _message_paths().get(full_name, full_name)
        names = _field_names(full_name)
        close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (valid fields: {', '.join(names)})"
        return f'{where} has no field "{bad}"{hint}'
    m = _ENUM_VALUE.search(raw)
    if m:
        from google.protobuf import descriptor_pool

        enum = descriptor_pool.Default().FindEnumTypeByName(m.group(1))
        return f"{m.group(2)} is not one of {', '.join(v.name for v in enum.values)}"
    return re.sub(r'"kestrel\.spec\.(\w+)"', r"\1", raw)


def _value_error(text: str, body: str, line: int, col: int) -> str:
    """`'<line>': Couldn't parse integer: "x"` -> `train_config.n_epochs: Couldn't parse integer: "x" (in '<line>')`."""
    m = _VALUE_ERROR.match(body)
    path = field_at(text, line, col) if m else None
    if not m or path is None:
        return _explain(body)
    return f"{path}: {_explain(m.group('what'))} (in '{m.group('quoted').strip()}')"


def parse_text(text: str, source: str) -> experiment_pb2.Experiment:
    """Parse spec text as the original does (text_format.Merge); `merge_warnings` says what Merge overrode.

    A syntax error becomes SpecError('FILE:LINE:COL: [dotted.field: ]what is wrong').
    """
    message = experiment_pb2.Experiment()
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as err:
        raw = str(err)
        line, col = err.GetLine(), err.GetColumn()
        body = re.sub(r"^\d+:\d+ : ", "", raw)
        if line is None:
            m = re.match(r"^(\d+):(\d+)", raw)
            if m:
                line, col = int(m.group(1)), int(m.group(2))
        if line is None:
            raise SpecError(f"{source}: {_explain(body)}") from None
        raise SpecError(f"{source}:{line}:{col}: {_value_error(text, body, line, col)}") from None
    return message


def merge_warnings(text: str, source: str) -> list[str]:
    """'FILE:LINE: path: what' for each scalar written twice and each oneof member another one replaced."""
    _, overridden = scan(text)
    return [f"{source}:{warning}" for warning in overridden]
