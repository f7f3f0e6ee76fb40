"""Meta-training speed and the quality it reaches, on one device.

Prints one JSON object: wall time, outer steps, tasks (episodes) per second,
the validation NDCG@20 that selected the model, the test NDCG@20 of the
selected model at each support size, and the process's peak resident memory
(data loading, training and scoring together: the trainer's standing target).
Then the new-item side as `coldstart train` fits it (trainer.items.fit_item_side:
the start network's cold-item episodes, the reference users, the step's
calibration), timed apart, with the items' text encoded first when the encoder is
installed (`--no-item-text` leaves it out).

    python benchmarks/bench_train.py --data ../shared/data/ml-1m --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch

from trainer.allocator import keep_large_blocks
from trainer.cli import resolve_device
from trainer.data import load_dataset
from trainer.episodes import make_context, rank_metrics
from trainer.items import fit_item_side
from trainer.model import ModelConfig
from trainer.split import eligible_test_users
from trainer.text import text_vectors
from trainer.train import TrainConfig, meta_train, score_fn

SUPPORT_SIZES = [0, 1, 3, 5, 10, 20]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-steps", type=int, default=TrainConfig.meta_steps)
    parser.add_argument("--users-per-step", type=int, default=TrainConfig.users_per_step)
    parser.add_argument("--item-text", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    keep_large_blocks()  # as the coldstart command does
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    started = time.perf_counter()
    text, encoder = text_vectors(data.item_text, args.item_text)
    encoding_s = time.perf_counter() - started
    ctx = make_context(data, args.seed, SUPPORT_SIZES, device, text)
    config = TrainConfig(meta_steps=args.meta_steps, users_per_step=args.users_per_step)
    model, summary = meta_train(ctx, ModelConfig(), config, progress=False)
    started = time.perf_counter()
    items = fit_item_side(model, ctx, config)
    item_side_s = time.perf_counter() - started
    test = eligible_test_users(ctx.seqs, ctx.split, max(SUPPORT_SIZES))
    test_ndcg = {
        str(k): round(float(rank_metrics(score_fn(model), ctx, test, k)[1].mean()), 4)
        for k in SUPPORT_SIZES
    }
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(
        json.dumps(
            {
                "data": data.name,
                "device": str(device),
                "device_name": name,
                "seed": args.seed,
                "users_per_step": args.users_per_step,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "wall_s": round(summary["seconds"], 1),
                "steps": summary["steps"],
                "best_step": summary["best_step"],
                "stopped": summary["stopped"],
                "tasks_per_s": round(summary["tasks_per_s"], 1),
                "valid_ndcg@20": round(summary["valid_ndcg@20"], 4),
                "test_ndcg@20": test_ndcg,
                "text_encoder": None if encoder is None else encoder.describe(),
                "text_encoding_s": round(encoding_s, 1),
                "item_side_s": round(item_side_s, 1),
                "with_item_side_x": round(
                    (summary["seconds"] + item_side_s) / summary["seconds"], 2
                ),
                "item_start_best_step": items["item_start"]["best_step"],
                "item_warm_after": items["item_step"]["warm_after"],
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
