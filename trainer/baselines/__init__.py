"""The methods the evaluation runs beside our model, on identical splits (DESIGN.md).

Each is a small class with the same duck-typed interface: `name`, `fit(ctx)`
(training users to learn from, validation users to tune on, never test users),
`scores(support) -> (B, I)` and `ratings(support) -> (B, I) | None`.
"""
