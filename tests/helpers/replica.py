"""`coldstart serve` as a child process, for the tests that kill or add replicas."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

COLDSTART = [sys.executable, "-c", "from service.cli import main; raise SystemExit(main())"]
ROOT = Path(__file__).resolve().parents[2]


class Replica:
    """One `coldstart serve` process on any free ports, its log, and what the log says."""

    def __init__(
        self,
        model_dir: Path,
        bootstrap: str,
        redis_url: str,
        log: Path,
        *,
        topic: str,
        group: str,
        batch: int,
        items_topic: str = "coldstart.items",
    ) -> None:
        self.log = log
        command = [*COLDSTART, "serve", "--model", str(model_dir), "--topic", topic]
        command += ["--items-topic", items_topic]
        command += ["--kafka-bootstrap", bootstrap, "--redis-url", redis_url]
        command += ["--consumer-group", group, "--grpc-port", "0", "--metrics-port", "0"]
        command += ["--poll-batch-size", str(batch), "--model-reload-s", "0"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def partitions(self) -> set[int]:
        """The partitions of its latest assignment (empty before it joined)."""
        found = re.findall(r"assigned partitions \[([0-9, ]*)\]", self.text())
        return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()

    def grpc_port(self) -> int | None:
        """The gRPC port it serves on, once it says so."""
        port = re.search(r"serving: gRPC on port (\d+)", self.text())
        return int(port[1]) if port else None

    def applied(self) -> float:
        """Events this process applied, from its own Prometheus endpoint."""
        port = re.search(r"metrics on http://[^:]+:(\d+)/metrics", self.text())
        if port is None:
            return 0.0
        with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=5) as page:
            scrape = page.read().decode()
        value = re.search(r"^coldstart_events_applied_total (\S+)$", scrape, re.MULTILINE)
        return float(value[1]) if value else 0.0
