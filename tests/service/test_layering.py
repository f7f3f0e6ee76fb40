"""The domain modules import no engine client: grpc, kafka and redis stay in the adapters."""

from __future__ import annotations

import subprocess
import sys

import pytest

DOMAIN = (
    "profiles",
    "requests",
    "recommend",
    "ingest",
    "applier",
    "model",
    "state",
    "observer",
    "events",
    "history",
    "errors",
    "catalogue",
    "live_items",
    "live_catalogue",
    "item_warmup",
    "item_registry",
)
ENGINES = ("grpc", "kafka", "redis")


@pytest.mark.parametrize("module", DOMAIN)
def test_a_domain_module_imports_no_engine_client(module: str) -> None:
    probe = (
        f"import sys, service.{module}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(ENGINES)!r}))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert imported == "[]", f"service.{module} imports {imported}"


def test_the_probe_sees_an_adapter_import_its_engine() -> None:
    probe = "import sys, service.store; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
