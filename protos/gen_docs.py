"""Regenerate protos/API.md, the API reference, from the comments in the .proto files.

The .proto comments are the one place the API is explained; this renders them as
Markdown so that a reader without protoc (or a browser on the repository) sees them,
and `tests/protos/test_api_docs.py` fails when the committed API.md is stale.
protoc parses the files (`--include_source_info` keeps the comments), so what is
documented is exactly what the compiler sees, not a regex's guess.

Run after editing a .proto file:  python protos/gen_docs.py
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from itertools import groupby
from pathlib import Path

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
    ServiceDescriptorProto,
    SourceCodeInfo,
)

if __package__:
    from .generate import PROTO_ROOT, proto_files
else:  # run as a script: python protos/gen_docs.py
    from generate import PROTO_ROOT, proto_files

logger = logging.getLogger(__name__)

API_MD = PROTO_ROOT / "API.md"

# SourceCodeInfo paths are field numbers and indexes into descriptor.proto's messages.
_SYNTAX = FileDescriptorProto.SYNTAX_FIELD_NUMBER  # the file's own comment sits on `syntax`
_MESSAGE = FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
_ENUM = FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
_SERVICE = FileDescriptorProto.SERVICE_FIELD_NUMBER
_FIELD = DescriptorProto.FIELD_FIELD_NUMBER
_NESTED_MESSAGE = DescriptorProto.NESTED_TYPE_FIELD_NUMBER
_NESTED_ENUM = DescriptorProto.ENUM_TYPE_FIELD_NUMBER
_ENUM_VALUE = EnumDescriptorProto.VALUE_FIELD_NUMBER
_METHOD = ServiceDescriptorProto.METHOD_FIELD_NUMBER

ElementPath = tuple[int, ...]


def descriptor_set() -> FileDescriptorSet:
    """Every .proto file, parsed by protoc with its comments kept."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(path) for path in proto_files()),
        ]
        result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")
        return FileDescriptorSet.FromString(out.read_bytes())


class Comments:
    """The comments of one file, by element path; remembers which elements had none."""

    def __init__(self, info: SourceCodeInfo) -> None:
        self._by_path = {
            tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip("\n")
            for loc in info.location
        }
        self.missing: list[str] = []

    def _text(self, path: ElementPath, name: str) -> list[str]:
        """The comment's lines without protoc's leading space; records a missing one."""
        text = self._by_path.get(path, "")
        if not text.strip():
            self.missing.append(name)
            return []
        return [line.removeprefix(" ").rstrip() for line in text.split("\n")]

    def block(self, path: ElementPath, name: str) -> list[str]:
        """The comment as Markdown lines and a blank one after (none when there is no comment);
        an indented run of lines (an example) is fenced as code."""
        lines: list[str] = []
        for indented, run in groupby(self._text(path, name), key=lambda s: s.startswith("  ")):
            code = textwrap.dedent("\n".join(run)).split("\n")
            lines += ["```", *code, "```"] if indented else code
        return [*lines, ""] if lines else []

    def cell(self, path: ElementPath, name: str) -> str:
        """The comment on one line, safe inside a Markdown table."""
        words = " ".join(self._text(path, name)).split()
        return " ".join(words).replace("|", "\\|")


def _anchor(full_name: str) -> str:
    return f'<a id="{full_name}"></a>'


def _stream(streaming: bool) -> str:
    return "stream " if streaming else ""


def _type_link(name: str) -> str:
    """A message or enum type as a link to its section (`.coldstart.v1.Event` -> Event)."""
    full = name.lstrip(".")
    return f"[`{full.rsplit('.', 1)[-1]}`](#{full})"


def _field_type(field: FieldDescriptorProto, maps: dict[str, DescriptorProto]) -> str:
    if field.type_name in maps:
        key, value = maps[field.type_name].field
        return f"map<{_field_type(key, maps)}, {_field_type(value, maps)}>"
    if field.type in (FieldDescriptorProto.TYPE_MESSAGE, FieldDescriptorProto.TYPE_ENUM):
        return _type_link(field.type_name)
    return f"`{FieldDescriptorProto.Type.Name(field.type).removeprefix('TYPE_').lower()}`"


def _field_label(field: FieldDescriptorProto, maps: dict[str, DescriptorProto]) -> str:
    if field.type_name in maps:
        return "map"
    if field.label == FieldDescriptorProto.LABEL_REPEATED:
        return "repeated"
    return "optional" if field.proto3_optional else "singular"


def _map_entries(
    prefix: str, messages: Sequence[DescriptorProto]
) -> Iterator[tuple[str, DescriptorProto]]:
    """Every `map<K, V>` field's synthetic entry message, by its full type name."""
    for message in messages:
        name = f"{prefix}.{message.name}"
        if message.options.map_entry:
            yield name, message
        yield from _map_entries(name, message.nested_type)


def _enum(enum: EnumDescriptorProto, full: str, path: ElementPath, comments: Comments) -> list[str]:
    lines = [f"### {_anchor(full)}enum `{enum.name}`", "", *comments.block(path, full)]
    lines += ["| value | number | description |", "|---|---|---|"]
    for i, value in enumerate(enum.value):
        text = comments.cell((*path, _ENUM_VALUE, i), f"{full}.{value.name}")
        lines.append(f"| `{value.name}` | {value.number} | {text} |")
    return [*lines, ""]


def _message(
    message: DescriptorProto,
    full: str,
    path: ElementPath,
    comments: Comments,
    maps: dict[str, DescriptorProto],
) -> list[str]:
    lines = [f"### {_anchor(full)}message `{message.name}`", "", *comments.block(path, full)]
    if message.field:
        lines += ["| field | number | type | label | description |", "|---|---|---|---|---|"]
        for i, field in enumerate(message.field):
            text = comments.cell((*path, _FIELD, i), f"{full}.{field.name}")
            kind, label = _field_type(field, maps), _field_label(field, maps)
            lines.append(f"| `{field.name}` | {field.number} | {kind} | {label} | {text} |")
        lines.append("")
    for i, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            nested_path = (*path, _NESTED_MESSAGE, i)
            lines += _message(nested, f"{full}.{nested.name}", nested_path, comments, maps)
    for i, enum in enumerate(message.enum_type):
        lines += _enum(enum, f"{full}.{enum.name}", (*path, _NESTED_ENUM, i), comments)
    return lines


def _file(file: FileDescriptorProto, comments: Comments) -> list[str]:
    package = f".{file.package}" if file.package else ""
    maps = dict(_map_entries(package, file.message_type))
    lines = [f"## `{file.name}`", "", *comments.block((_SYNTAX,), file.name)]
    for i, service in enumerate(file.service):
        full = f"{file.package}.{service.name}"
        lines += [f"### {_anchor(full)}service `{service.name}`", ""]
        lines += comments.block((_SERVICE, i), full)
        for j, method in enumerate(service.method):
            request = _stream(method.client_streaming) + _type_link(method.input_type)
            response = _stream(method.server_streaming) + _type_link(method.output_type)
            lines += [f"#### `{service.name}.{method.name}`", ""]
            lines += [f"`rpc {method.name}` ({request}) returns ({response})", ""]
            lines += comments.block((_SERVICE, i, _METHOD, j), f"{full}.{method.name}")
    for i, enum in enumerate(file.enum_type):
        lines += _enum(enum, f"{file.package}.{enum.name}", (_ENUM, i), comments)
    for i, message in enumerate(file.message_type):
        full = f"{file.package}.{message.name}"
        lines += _message(message, full, (_MESSAGE, i), comments, maps)
    return lines


def render(files: FileDescriptorSet) -> tuple[str, list[str]]:
    """The API reference as Markdown, and the elements that have no comment."""
    lines = [
        "# coldstart API reference",
        "",
        "<!-- Generated by `python protos/gen_docs.py` from the .proto comments; do not edit. -->",
        "",
    ]
    missing: list[str] = []
    for file in files.file:
        comments = Comments(file.source_code_info)
        lines += _file(file, comments)
        missing += comments.missing
    return "\n".join(lines).rstrip("\n") + "\n", missing


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    text, missing = render(descriptor_set())
    if missing:
        logger.warning("no comment on %s", ", ".join(missing))
    API_MD.write_text(text)
    logger.info("wrote %s", API_MD)
