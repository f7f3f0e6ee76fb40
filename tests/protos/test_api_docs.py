"""The committed protos/API.md must be what protos/gen_docs.py makes from the .proto comments."""

from __future__ import annotations

import re

import pytest
from google.protobuf.descriptor_pb2 import (
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
)

from protos.gen_docs import API_MD, descriptor_set, render


@pytest.fixture(scope="module")
def fresh() -> tuple[str, list[str]]:
    """(API.md as the .proto files make it now, the elements without a comment)."""
    return render(descriptor_set())


def test_api_reference_is_not_stale(fresh: tuple[str, list[str]]) -> None:
    text, _ = fresh
    assert API_MD.read_text() == text, "protos/API.md is stale: run python protos/gen_docs.py"


def test_every_api_element_has_a_comment(fresh: tuple[str, list[str]]) -> None:
    """The reference is only as good as the comments: an undocumented field is a gap in it."""
    _, missing = fresh
    assert missing == [], f"add a comment in the .proto file to: {missing}"


def test_reference_covers_services_messages_fields_and_enums() -> None:
    text = API_MD.read_text()
    for rpc in ("Recommend", "RecordEvents", "GetUserState"):
        assert f"#### `Recommender.{rpc}`" in text
    assert "(stream [`Event`](#coldstart.v1.Event))" in text  # client streaming is shown
    assert "| `features` | 4 | map<`string`, `string`> | map |" in text
    assert "| `items` | 1 | [`ScoredItem`](#coldstart.v1.ScoredItem) | repeated |" in text
    assert "| `ADAPTED` | 2 | Scored from the user's adapted state" in text


def test_every_type_link_has_its_anchor() -> None:
    text = API_MD.read_text()
    links = set(re.findall(r"\]\(#([\w.]+)\)", text))
    anchors = set(re.findall(r'<a id="([\w.]+)"></a>', text))
    assert links and links <= anchors, f"links without a section: {sorted(links - anchors)}"


def test_an_element_without_a_comment_is_reported_and_still_documented() -> None:
    file = FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    message = file.message_type.add(name="Bare")
    message.field.add(name="id", number=1, type=FieldDescriptorProto.TYPE_STRING)
    text, missing = render(FileDescriptorSet(file=[file]))
    assert missing == ["t.proto", "t.Bare", "t.Bare.id"]
    assert "| `id` | 1 | `string` | singular |  |" in text
    assert "\n\n\n" not in text
