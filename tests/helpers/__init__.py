"""Helpers the tests share: a tiny trained model, waiting for a condition, a service
replica in a subprocess, a gRPC service started in-process."""
