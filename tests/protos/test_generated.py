"""The committed generated API code must be what protos/generate.py makes from the .proto files."""

from __future__ import annotations

from pathlib import Path

from protos.generate import PROTO_ROOT, generate, generated_files


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = generated_files(PROTO_ROOT)
    assert fresh == committed, (
        "generated files differ from committed ones: run python protos/generate.py"
    )
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (PROTO_ROOT / p).read_bytes()]
    assert not stale, f"stale generated code {stale}: run python protos/generate.py"


def test_generated_code_imports_as_coldstart_v1() -> None:
    from coldstart.v1 import recommender_pb2, recommender_pb2_grpc

    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    assert sorted(service.methods_by_name) == [
        "GetItemState",
        "GetModelInfo",
        "GetUserState",
        "Recommend",
        "RecordEvents",
        "UpsertItems",
        "UpsertUser",
    ]
    assert service.methods_by_name["RecordEvents"].client_streaming
    assert recommender_pb2.UserStateKind.Name(2) == "ADAPTED"
    assert hasattr(recommender_pb2_grpc, "add_RecommenderServicer_to_server")
