"""The coldstart API's generated protobuf and gRPC code (`coldstart.v1`).

Lives under `protos/` beside the .proto files it is generated from, so the API
has one source of truth; pyproject maps this import package to that folder.
"""
