"""The trainer on a GPU: the CLI end to end on CUDA, the same numbers as on the CPU, and
an artifact the CPU-only service loads.

Skipped where torch sees no CUDA device, as in CI; on a GPU machine:
`python -m pytest tests/trainer/test_cuda.py` (benchmarks/gpu_train.sh runs it).
"""

from pathlib import Path

import pytest
import torch

from trainer import artifact
from trainer.episodes import make_context, rank_metrics
from trainer.model import ModelConfig
from trainer.train import build_model, score_fn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_train_and_evaluate_every_method_on_cuda(train_then_evaluate) -> None:
    run = train_then_evaluate("cuda")
    assert run.manifest["training"]["device"] == "cuda"
    results = run.results["methods"]
    baselines = {"popularity", "item_knn", "mf_finetune", "melu"}
    assert set(results) == baselines | {"coldstart", "coldstart_as_served", "coldstart_no_profile"}
    for k in ("3", "10"):
        assert results["coldstart"][k]["ndcg@20"] > results["popularity"][k]["ndcg@20"]
        assert results["coldstart"][k]["mae"] is not None


def test_a_model_adapts_and_ranks_alike_on_cuda_and_cpu(tmp_path: Path, synthetic_data) -> None:
    data = synthetic_data(400, 150, seed=1)
    cpu, cuda = (make_context(data, 0, [0, 3, 10], torch.device(d)) for d in ("cpu", "cuda"))
    model = build_model(cpu, ModelConfig(dim=16)).requires_grad_(False)
    users = cpu.validation_users()
    on_cpu = rank_metrics(score_fn(model), cpu, users, 5)
    model.cuda()
    on_cuda = rank_metrics(score_fn(model), cuda, users, 5)
    for a, b in zip(on_cpu, on_cuda, strict=True):
        assert abs(a.mean() - b.mean()) < 1e-3  # float32 on two devices: rare rank swaps
    artifact.save(model, data, tmp_path / "model", {"seed": 0})
    loaded = artifact.load(tmp_path / "model").model.state_dict()
    for name, tensor in model.state_dict().items():
        assert loaded[name].device.type == "cpu"
        torch.testing.assert_close(loaded[name], tensor.cpu())
