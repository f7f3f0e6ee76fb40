"""The inner step: closed-form gradient, batching, and the evidence-scaled step."""

import torch

from benchmarks.bench_adapt import per_user_inner_loop, random_problem
from trainer.adapt import InnerRule, inner_loop, scores, support_gradient, support_loss


def _rule(dim: int, steps: int = 5) -> InnerRule:
    gen = torch.Generator().manual_seed(1)
    preconditioner = torch.diag(torch.linspace(0.5, 1.5, dim)) + 0.1 * torch.randn(
        dim, dim, generator=gen
    )
    return InnerRule(
        preconditioner=preconditioner, prior=torch.tensor(2.0), rating_weight=0.1, steps=steps
    )


def test_closed_form_gradient_equals_autograd() -> None:
    users, items, support = random_problem(n_users=6, n_support=4, n_items=30, dim=8)
    users.requires_grad_(True)
    (expected,) = torch.autograd.grad(support_loss(users, items, support, 0.1).sum(), users)
    actual = support_gradient(users, items, support, 0.1)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_batched_inner_loop_equals_per_user_loop() -> None:
    users, items, support = random_problem(n_users=16, n_support=7, n_items=50, dim=8)
    rule = _rule(8)
    torch.testing.assert_close(
        inner_loop(users, items, support, rule),
        per_user_inner_loop(users, items, support, rule),
        rtol=1e-4,
        atol=1e-5,
    )


def test_one_shared_start_equals_that_start_repeated() -> None:
    users, items, support = random_problem(n_users=8, n_support=6, n_items=40, dim=8)
    shared = users[:1]  # (1, d): the service's start for users without side features
    adapted = inner_loop(shared, items, support, _rule(8))
    torch.testing.assert_close(adapted, inner_loop(shared.expand(8, -1), items, support, _rule(8)))
    expected = per_user_inner_loop(shared.expand(8, -1), items, support, _rule(8))
    torch.testing.assert_close(adapted, expected, rtol=1e-4, atol=1e-5)
    unmoved = inner_loop(shared, items, support, _rule(8, steps=0))
    assert unmoved.shape == (8, 8) and unmoved.data_ptr() != shared.data_ptr()


def test_distinct_starts_named_per_user_equal_each_users_own_start() -> None:
    users, items, support = random_problem(n_users=8, n_support=6, n_items=40, dim=8)
    distinct = users[:3]  # (U, d): the service's starts, one per distinct profile
    start_of = torch.tensor([0, 2, 2, 1, 0, 1, 2, 0])
    adapted = inner_loop(distinct, items, support, _rule(8), start_of=start_of)
    torch.testing.assert_close(adapted, inner_loop(distinct[start_of], items, support, _rule(8)))


def test_empty_support_keeps_the_prior_and_evidence_scales_the_step() -> None:
    users, items, support = random_problem(n_users=4, n_support=5, n_items=20, dim=6)
    support.mask[0] = 0
    support.rated[0] = 0
    adapted = inner_loop(users, items, support, _rule(6, steps=1))
    torch.testing.assert_close(adapted[0], users[0])
    grad = support_gradient(users, items, support, 0.1)
    n = support.mask.sum(1, keepdim=True)
    expected = -(grad @ _rule(6).preconditioner.T) / (n + 2.0)
    torch.testing.assert_close(adapted - users, expected)


def test_second_order_gradient_differs_from_first_order() -> None:
    users, items, support = random_problem(n_users=4, n_support=5, n_items=20, dim=6)
    vectors = items.vectors.clone().requires_grad_(True)
    tables = type(items)(vectors, items.bias, items.rating_vectors, items.rating_bias)
    grads = []
    for first_order in (False, True):
        adapted = inner_loop(users, tables, support, _rule(6), first_order=first_order)
        query_loss = -torch.log_softmax(scores(adapted, tables), dim=1)[:, 0].sum()
        (grad,) = torch.autograd.grad(query_loss, vectors)
        grads.append(grad)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])
