"""The inner step: adapt many users' vectors at once on their support sets.

A pure function of tensors, shared unchanged by meta-training, evaluation and
the online service. The support-loss gradient is written in closed form
rather than taken with autograd: it is the same differentiable expression
(so second-order meta-gradients flow through it), and serving needs no
autograd graph at all.

Support loss of user u over support items S (mask m), for scores
s_j = u . v_j + b_j over the whole catalogue:
    L(u) = -sum_s m_s log softmax(s)_s  +  w * sum_s q_s (u . w_s + c_s - r_s)^2
where q marks the support events that carry a rating r (a click carries none).
The step is a learned preconditioner P, shrunk by the evidence:
    u <- u - P grad L(u) / (n + prior)
so one event moves u a little, many events move it far (a mean-gradient step
of size n / (n + prior)), and an empty support set leaves u at its prior.
P = diag(per-dimension rates) + a learned full matrix: Meta-SGD's rates plus
a Meta-Curvature-style full preconditioner (Park & Oliva, 2019). The full
matrix lets a support item move u along directions other than its own
vector, so item-to-item affinity need not be symmetric, which measured
better on validation users than per-dimension rates alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from trainer.split import Support


@dataclass(frozen=True)
class ItemTables:
    """What scoring and adaptation need of the items."""

    vectors: torch.Tensor  # (I, d) ranking embeddings v_i
    bias: torch.Tensor  # (I,) ranking bias b_i
    rating_vectors: torch.Tensor  # (I, d) rating embeddings w_i
    rating_bias: torch.Tensor  # (I,) rating offset c_i (the global mean included)


@dataclass(frozen=True)
class InnerRule:
    """The meta-learned adaptation rule."""

    preconditioner: torch.Tensor  # (d, d) P, the inner learning rate as a matrix
    prior: torch.Tensor  # () prior strength: evidence needed to move a full step
    rating_weight: float  # weight of the rating term; 0 for implicit data
    steps: int  # K inner steps


def scores(users: torch.Tensor, items: ItemTables) -> torch.Tensor:
    """(B, d) user vectors -> (B, I) ranking scores u . v_i + b_i."""
    return _affine(users, items.vectors, items.bias)


def ratings(users: torch.Tensor, items: ItemTables) -> torch.Tensor:
    """(B, d) user vectors -> (B, I) predicted ratings u . w_i + c_i."""
    return _affine(users, items.rating_vectors, items.rating_bias)


def _affine(users: torch.Tensor, vectors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # mm, then the bias added in place: no (B, I) temporary, and faster than addmm, which
    # first copies the bias into every row of its output.
    return torch.mm(users, vectors.T).add_(bias)


def support_loss(
    users: torch.Tensor, items: ItemTables, support: Support, rating_weight: float
) -> torch.Tensor:
    """L(u) for each user, (B,): the loss whose gradient support_gradient computes."""
    log_probs = torch.log_softmax(scores(users, items), dim=1)  # (B, I)
    loss = -(support.mask * log_probs.gather(1, support.items)).sum(1)
    if rating_weight:
        predicted = ratings(users, items).gather(1, support.items)  # (B, S)
        loss = loss + rating_weight * (support.rated * (predicted - support.ratings) ** 2).sum(1)
    return loss


@dataclass(frozen=True)
class SupportTerms:
    """The parts of the support-loss gradient that do not depend on u: gathered once per
    support set, not once per inner step."""

    count: torch.Tensor  # (B, 1) n, the number of support events
    positives: torch.Tensor  # (B, d) sum of the support items' vectors
    rating_vectors: torch.Tensor  # (B, S, d) w_s of each support event
    rating_offsets: torch.Tensor  # (B, S) c_s - r_s of each rated event
    rated: torch.Tensor  # (B, S) q_s: 1 where the event carries a rating


def support_terms(items: ItemTables, support: Support) -> SupportTerms:
    """`items` is the table the support indexes: the scored catalogue, or for the item role
    the support users' own rows."""
    mask = support.mask  # (B, S)
    return SupportTerms(
        count=mask.sum(1, keepdim=True),
        # Summed in place of gathering a (B, S, d) copy of the vectors first.
        positives=F.embedding_bag(
            support.items, items.vectors, per_sample_weights=mask, mode="sum"
        ),
        rating_vectors=items.rating_vectors[support.items],
        rating_offsets=items.rating_bias[support.items] - support.ratings,
        rated=support.rated,
    )


def support_gradient(
    users: torch.Tensor, items: ItemTables, support: Support, rating_weight: float
) -> torch.Tensor:
    """d L / d u for each user, (B, d); L as in the module docstring."""
    return _gradient(users, items, support_terms(items, support), rating_weight)


def _gradient(
    users: torch.Tensor,
    items: ItemTables,
    terms: SupportTerms,
    rating_weight: float,
    expected: torch.Tensor | None = None,  # (B, d) E_softmax(u)[v], when already known
) -> torch.Tensor:
    if expected is None:
        expected = torch.softmax(scores(users, items), dim=1) @ items.vectors  # (B, d)
    grad = terms.count * expected - terms.positives
    if rating_weight:
        w = terms.rating_vectors  # (B, S, d)
        predicted = (w @ users.unsqueeze(-1)).squeeze(-1)  # (B, S): u . w_s
        error = terms.rated * (predicted + terms.rating_offsets)  # (B, S)
        grad = grad + 2 * rating_weight * torch.bmm(error.unsqueeze(1), w).squeeze(1)
    return grad


def inner_loop(
    initial: torch.Tensor,
    items: ItemTables,
    support: Support,
    rule: InnerRule,
    first_order: bool = False,
    start_of: torch.Tensor | None = None,
    pulls: ItemTables | None = None,
) -> torch.Tensor:
    """K steps from the initial vectors; returns the adapted vectors (B, d).

    The same step serves both roles. A user is pulled towards its support items and
    scored against the item catalogue. An item (vector and bias as one row, users as
    rows [u, 1]) is pulled towards its support users, given as `pulls` (the rows the
    support indexes), and scored against a fixed reference set of users.

    `initial` is (B, d), one start per user; or (U, d) distinct starts, with `start_of`
    (B,) naming each user's row (without it, a (1, d) start is every user's). Users who
    share a start then share the first step's scores and softmax, computed once per
    distinct start: the catalogue-wide part of that step costs U rows, not B.
    first_order drops the second-order terms (the inner gradients are treated
    as constants), as in first-order MAML.
    """
    terms = support_terms(items if pulls is None else pulls, support)
    scale = 1.0 / (terms.count + rule.prior)  # (B, 1)
    if start_of is None and len(initial) != len(scale):
        if len(initial) != 1:
            raise ValueError(f"{len(initial)} starts for {len(scale)} users need start_of")
        start_of = torch.zeros(len(scale), dtype=torch.long, device=initial.device)
    users, expected = initial, None
    if start_of is not None:
        users = initial[start_of]  # (B, d), a copy
        if rule.steps:
            expected = (torch.softmax(scores(initial, items), dim=1) @ items.vectors)[start_of]
    for _ in range(rule.steps):
        grad = _gradient(users, items, terms, rule.rating_weight, expected)
        expected = None
        if first_order:
            grad = grad.detach()
        users = users - scale * (grad @ rule.preconditioner.T)
    return users
