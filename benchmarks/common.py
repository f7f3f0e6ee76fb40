"""What the service benchmarks share: an ml-1m-sized model, adapted users, percentiles, /proc.

The model is built, not trained: `trainer.train.build_model` on the ml-1m
context (SVD item vectors, the prior and rule at their initial values, registered
items adapting on their first BUILT_WARM_AFTER events), saved
as a normal artifact. Serving and adaptation cost depend on the catalogue size,
the dimension and the number of inner steps, not on how well the weights were
learned, and building takes seconds where meta-training takes minutes. Pass
`--model DIR` to a benchmark to measure a trained artifact instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import coldstart
import numpy as np
import torch

import service
from service.history import History, HistoryEntry
from service.model import ServingModel
from service.state import UserRecord, now_ms
from service.store import UserStore
from trainer import artifact
from trainer.data import load_dataset
from trainer.episodes import make_context
from trainer.model import ModelConfig
from trainer.train import build_model

DEFAULT_DATA = Path("../shared/data/ml-1m")
# A new item adapts on this many events, as a fitted item side may choose (built models
# have no fitted item side, and would otherwise never warm a registered item).
BUILT_WARM_AFTER = 20


def built_model(data_dir: Path, out: Path, seed: int = 0) -> Path:
    """Writes an untrained (built, zero meta steps) artifact for `data_dir` into `out`."""
    data = load_dataset(data_dir)
    ctx = make_context(data, seed, [0], torch.device("cpu"))
    model = build_model(ctx, ModelConfig())
    model.item_warm_after.fill_(BUILT_WARM_AFTER)
    extra = {"seed": seed, "benchmark": "built by trainer.train.build_model, not meta-trained"}
    artifact.save(model, data, out, extra)
    return out


def random_histories(
    item_ids: Sequence[str], users: int, length: int, seed: int = 0
) -> list[History]:
    """`users` histories of `length` rating events on random catalogue items."""
    rng = random.Random(seed)
    return [
        History(HistoryEntry(rng.choice(item_ids), float(rng.randint(1, 5))) for _ in range(length))
        for _ in range(users)
    ]


def seed_users(
    model: ServingModel,
    store: UserStore,
    user_ids: Sequence[str],
    histories: Sequence[History],
    profiles: Sequence[dict[str, str]],
    batch: int = 500,
) -> None:
    """Adapts the users on their histories and profiles (the service's own batched call) and
    writes them through the store, as the consumer would have: model version current,
    state version 1."""
    for start in range(0, len(user_ids), batch):
        span = slice(start, start + batch)
        records = [
            UserRecord(u, model.prior.numpy(), h, model.version, 1, {}, 0, p)
            for u, h, p in zip(user_ids[span], histories[span], profiles[span], strict=True)
        ]
        vectors = model.adapt(
            [model.interactions(r.history) for r in records], [r.profile for r in records]
        )
        written_at = now_ms()
        records = [
            replace(r, vector=v.numpy().copy(), updated_at_ms=written_at)
            for r, v in zip(records, vectors, strict=True)
        ]
        written = store.put_many(records)
        if len(written) != len(records):
            raise RuntimeError(f"only {len(written)} of {len(records)} users were written")


def adapted_users(
    args: argparse.Namespace, redis_url: str, work: Path, profiles: bool = False
) -> tuple[Path, ServingModel, UserStore, list[str]]:
    """The model (args.model, or one built from args.data) and args.users adapted users,
    each with an args.history-event history (and, with `profiles`, a profile of a known
    value of every feature), written to Redis: both benchmarks' set-up."""
    model_dir = args.model or built_model(args.data, work / "model")
    model = ServingModel(artifact.load(model_dir))
    store = UserStore.from_url(redis_url)
    user_ids = [f"bench-user-{i}" for i in range(args.users)]
    histories = random_histories(model.item_ids, args.users, args.history, seed=0)
    chosen = random_profiles(model, args.users, seed=0) if profiles else [{}] * args.users
    seed_users(model, store, user_ids, histories, chosen)
    return model_dir, model, store, user_ids


def random_profiles(model: ServingModel, n: int, seed: int) -> list[dict[str, str]]:
    """`n` profiles, each a random known value of every feature the model has."""
    rng = np.random.default_rng(seed)
    values = model.features.values
    return [{name: str(rng.choice(values[name][1:])) for name in values} for _ in range(n)]


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p99 and p99.9 of durations in seconds, in milliseconds."""
    if not len(samples_s):
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    p50, p99, p999 = np.percentile(np.asarray(samples_s) * 1000.0, [50, 99, 99.9])
    return {
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "p999_ms": round(float(p999), 3),
    }


def cpu_seconds(*pids: int) -> float:
    """User plus system CPU time of processes (their threads included), from /proc."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def code_roots() -> list[str]:
    """Where this process imported the service and the generated API from."""
    return [str(Path(m.__file__).resolve().parents[1]) for m in (service, coldstart)]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process this benchmark starts: the same code as this process
    (an editable install may point at another checkout), no COLDSTART_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDSTART_")}
    paths = [*code_roots(), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


def machine() -> dict[str, object]:
    """What ran the benchmark, and how busy it was (other processes skew these numbers)."""
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "code": code_roots()[0],
        "other_busy": other_busy(),
    }


def other_busy() -> list[str]:
    """Command lines of known heavy processes (a quality evaluation) running alongside."""
    found = subprocess.run(
        ["pgrep", "-af", "coldstart (evaluate|train)"], capture_output=True, text=True
    ).stdout
    return [line.split(" ", 1)[1][:120] for line in found.splitlines() if " " in line]
