"""Batched inner step vs a per-user (or per-item) Python loop doing the same math.

The loop is how reference MAML code adapts: one user at a time, the gradient
taken by autograd. Both start from the same vectors and take the same K
steps; the script prints one JSON object with users/s of each, the speed-up
and the largest difference between their results. `--mode item` times the same
step in the item role (trainer.items.item_step): new items stepping on their
support users, scored against the reference users; its rates are items/s.

    python benchmarks/bench_adapt.py [--mode user|item] [--users 256] [--support 20]
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
from trainer.items import item_step
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


def per_item_step(
    starts: torch.Tensor,
    support: Support,
    users: torch.Tensor,
    reference: torch.Tensor,
    rule: InnerRule,
) -> torch.Tensor:
    """The item step one item at a time, gradients by autograd of the item's loss:
    -sum_s [u_s, 1] . row + n log(sum_r exp([u_r, 1] . row) + R)."""
    ones = lambda x: torch.cat([x, torch.ones(len(x), 1)], 1)  # noqa: E731
    scored, outside = ones(reference), torch.tensor([float(len(reference))]).log()
    adapted = []
    for b in range(len(starts)):
        chosen = support.items[b][support.mask[b] > 0]
        pulls, n = ones(users[chosen]), float(len(chosen))
        row = starts[b]
        for _ in range(rule.steps):
            row = row.detach().requires_grad_(True)
            logits = torch.cat([scored @ row, outside])
            loss = -(pulls @ row).sum() + n * torch.logsumexp(logits, 0)
            (grad,) = torch.autograd.grad(loss, row)
            row = row - grad @ rule.preconditioner.T / (n + rule.prior)
        adapted.append(row.detach())
    return torch.stack(adapted)


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


def item_problem(n_items: int, n_support: int, n_users: int, n_reference: int, dim: int):
    """Random starts, users and supports; reuses random_problem's support sets."""
    starts, _, support = random_problem(n_items, n_support, n_users, dim + 1, seed=1)
    gen = torch.Generator().manual_seed(2)
    users = torch.randn(n_users, dim, generator=gen) * 0.3
    reference = users[torch.randint(0, n_users, (n_reference,), generator=gen)]
    rule = InnerRule(torch.eye(dim + 1) * 0.5, torch.tensor(3.0), 0.0, 0)
    return starts, support, users, reference, rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("user", "item"), default="user")
    parser.add_argument("--users", type=int, default=256, help="users, or items in item mode")
    parser.add_argument("--reference", type=int, default=1024, help="item mode: reference users")
    parser.add_argument("--support", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--items", type=int, default=3706, help="ml-1m's catalogue size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tuned = keep_large_blocks()  # as every coldstart entry point does (trainer.allocator)
    if args.mode == "user":
        initial, items, support = random_problem(args.users, args.support, args.items, args.dim)
        rule = InnerRule(
            preconditioner=torch.eye(args.dim) + 0.01 * torch.randn(args.dim, args.dim),
            prior=torch.tensor(3.0),
            rating_weight=0.05,
            steps=args.steps,
        )

        def batched_fn():
            return inner_loop(initial, items, support, rule)

        def loop_fn():
            return per_user_inner_loop(initial, items, support, rule)
    else:  # --items is then the user table the supports index
        starts, support, users, reference, rule = item_problem(
            args.users, args.support, args.items, args.reference, args.dim
        )
        rule = InnerRule(rule.preconditioner, rule.prior, 0.0, args.steps)

        def batched_fn():
            return item_step(starts, support, users, reference, rule)

        def loop_fn():
            return per_item_step(starts, support, users, reference, rule)

    with torch.no_grad():
        batched = batched_fn()
    looped = loop_fn()
    with torch.no_grad():
        batched_s = _median_seconds(batched_fn, args.repeats)
    loop_s = _median_seconds(loop_fn, max(1, args.repeats // 2))
    print(
        json.dumps(
            {
                "mode": args.mode,  # item mode's rates count items
                "users": args.users,
                "support": args.support,
                "steps": args.steps,
                "items": args.items,
                "reference": args.reference if args.mode == "item" else None,
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
