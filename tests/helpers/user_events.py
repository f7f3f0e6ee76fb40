"""Events for one user, and the check that a stored state is its history's adaptation."""

from __future__ import annotations

import numpy as np

from service.events import Event
from service.model import ServingModel
from service.state import UserRecord, now_ms


def event(user: str, n: int, item: str, rating: float | None = None) -> Event:
    kind, value = ("rating", rating) if rating is not None else ("click", 1.0)
    return Event(f"{user}-{n}", user, item, kind, value, now_ms())


def assert_adapted_from_history(model: ServingModel, record: UserRecord) -> None:
    expected = model.adapt([model.interactions(record.history)])[0].numpy()
    np.testing.assert_allclose(record.vector, expected, rtol=1e-5, atol=1e-6)
    assert record.model_version == model.version
