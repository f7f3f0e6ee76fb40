"""Validation NDCG@20 per support size of coldstart config variants, beside a baseline.

One seed's split, validation users only (never test users): each variant is a
`coldstart` model meta-trained with some ModelConfig / TrainConfig fields
overridden, reported with its gain over the baseline (mf_finetune, or popularity
with `--baseline popularity`; fitted once on the same split) at every k, with
and without the users' profiles.

    python benchmarks/quality_variants.py --data ../shared/data/ml-1m \
        --variant '{}' --variant '{"patience": 10}' --variant '{"rating_weight": 0.0}'

Prints one JSON object per variant (mf_finetune's numbers first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA

from trainer.allocator import keep_large_blocks
from trainer.baselines.mf import MatrixFactorisation
from trainer.baselines.popularity import Popularity
from trainer.data import load_dataset
from trainer.episodes import make_context, validation_ndcg_by_k
from trainer.model import ModelConfig
from trainer.train import TrainConfig, meta_train, score_fn

SUPPORT_SIZES = [0, 1, 3, 5, 10, 20]
BASELINES = {"mf_finetune": MatrixFactorisation, "popularity": Popularity}


def configs(overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """Splits one {field: value} mapping over the two config classes; unknown fields fail."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model = {k: v for k, v in overrides.items() if k in model_fields}
    train = {k: v for k, v in overrides.items() if k not in model_fields}
    return ModelConfig(**model), TrainConfig(**train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0, help="the user split")
    parser.add_argument("--variant", action="append", type=json.loads, default=[])
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="mf_finetune")
    args = parser.parse_args()
    keep_large_blocks()  # as the coldstart command does
    ctx = make_context(load_dataset(args.data), args.seed, SUPPORT_SIZES, torch.device("cpu"))
    reference = BASELINES[args.baseline]()
    reference.fit(ctx)
    baseline = validation_ndcg_by_k(reference.scores, ctx)
    print(json.dumps({"method": args.baseline, "valid_ndcg@20": baseline}), flush=True)
    for overrides in args.variant or [{}]:
        started = time.perf_counter()
        model, summary = meta_train(ctx, *configs(overrides), progress=False)
        score = score_fn(model)
        ndcg = validation_ndcg_by_k(score, ctx)
        bare = validation_ndcg_by_k(lambda support, s=score: s(support.without_features()), ctx)
        gain = {k: round(100 * (v / baseline[k] - 1), 2) for k, v in ndcg.items()}
        bare_gain = {k: round(100 * (v / baseline[k] - 1), 2) for k, v in bare.items()}
        report = {
            "method": "coldstart",
            "variant": overrides,
            "seconds": round(time.perf_counter() - started, 1),
            "best_step": summary["best_step"],
            "mean_valid_ndcg@20": round(float(np.mean(list(ndcg.values()))), 4),
            "valid_ndcg@20": {k: round(v, 4) for k, v in ndcg.items()},
            "gain_percent": gain,
            "no_profile_gain_percent": bare_gain,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
