"""What every RPC checks of its request's user id and profile, by the rules the event
schema applies to events (service.events), as INVALID_ARGUMENT's errors."""

from __future__ import annotations

from collections.abc import Mapping

from service.errors import InvalidEvent, InvalidRequest
from service.events import check_feature_map, check_id
from service.model import ServingModel


def check_user_id(user_id: str) -> None:
    try:
        check_id("user_id", user_id)
    except InvalidEvent as error:
        raise InvalidRequest(error.message) from None


def check_profile(features: Mapping[str, str], model: ServingModel) -> None:
    """A request's features: bounded names and values (as on events), names the model's."""
    try:
        check_feature_map(features)
    except InvalidEvent as error:
        raise InvalidRequest(error.message) from None
    model.check_features(features)  # raises UnknownFeatureError
