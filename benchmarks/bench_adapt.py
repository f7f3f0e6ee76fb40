"""Batched inner step vs a per-user Python loop doing the same math.

The loop is how reference MAML code adapts: one user at a time, the gradient
taken by autograd. Both start from the same vectors and take the same K
steps; the script prints one JSON object with users/s of each, the speed-up
and the largest difference between their results.

    python benchmarks/bench_adapt.py [--users 256] [--support 20] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from trainer.adapt import InnerRule, ItemTables, inner_loop, support_loss
from trainer.allocator import keep_large_blocks
from trainer.split import Support


def per_user_inner_loop(
    initial: torch.Tensor, items: ItemTables, support: Support, rule: InnerRule
) -> torch.Tensor:
    """The same K steps, one user at a time, gradients by autograd."""
    adapted = []
    for b in range(initial.shape[0]):
        one = Support(*(t[b : b + 1] for t in vars(support).values()))
        scale = 1.0 / (one.mask.sum() + rule.prior)
        user = initial[b : b + 1]
        for _ in range(rule.steps):
            user = user.detach().requires_grad_(True)
            loss = support_loss(user, items, one, rule.rating_weight).sum()
            (grad,) = torch.autograd.grad(loss, user)
            user = user - scale * grad @ rule.preconditioner.T
        adapted.append(user.detach())
    return torch.cat(adapted)


def random_problem(n_users: int, n_support: int, n_items: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    items = ItemTables(
        vectors=torch.randn(n_items, dim, generator=gen) * 0.1,
        bias=torch.randn(n_items, generator=gen),
        rating_vectors=torch.randn(n_items, dim, generator=gen) * 0.1,
        rating_bias=torch.full((n_items,), 3.5),
    )
    sizes = torch.randint(0, n_support + 1, (n_users,), generator=gen)
    mask = (torch.arange(n_support)[None, :] < sizes[:, None]).float()
    support = Support(
        items=torch.randint(0, n_items, (n_users, n_support), generator=gen),
        mask=mask,
        ratings=mask * torch.randint(1, 6, (n_users, n_support), generator=gen).float(),
        rated=mask * (torch.rand(n_users, n_support, generator=gen) < 0.7).float(),
        user_features=torch.zeros(n_users, 0, dtype=torch.long),
    )
    initial = torch.randn(n_users, dim, generator=gen) * 0.1
    return initial, items, support


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--support", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--items", type=int, default=3706, help="ml-1m's catalogue size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tuned = keep_large_blocks()  # as every coldstart entry point does (trainer.allocator)
    initial, items, support = random_problem(args.users, args.support, args.items, args.dim)
    rule = InnerRule(
        preconditioner=torch.eye(args.dim) + 0.01 * torch.randn(args.dim, args.dim),
        prior=torch.tensor(3.0),
        rating_weight=0.05,
        steps=args.steps,
    )
    with torch.no_grad():
        batched = inner_loop(initial, items, support, rule)
    looped = per_user_inner_loop(initial, items, support, rule)
    with torch.no_grad():
        batched_s = _median_seconds(lambda: inner_loop(initial, items, support, rule), args.repeats)
    loop_s = _median_seconds(
        lambda: per_user_inner_loop(initial, items, support, rule), max(1, args.repeats // 2)
    )
    print(
        json.dumps(
            {
                "users": args.users,
                "support": args.support,
                "steps": args.steps,
                "items": args.items,
                "dim": args.dim,
                "threads": torch.get_num_threads(),
                "allocator_tuned": tuned,
                "machine": platform.processor() or platform.machine(),
                "users_per_s_batched": round(args.users / batched_s, 1),
                "users_per_s_loop": round(args.users / loop_s, 1),
                "speedup": round(loop_s / batched_s, 1),
                "max_abs_diff": float((batched - looped).abs().max()),
            }
        )
    )


if __name__ == "__main__":
    main()
