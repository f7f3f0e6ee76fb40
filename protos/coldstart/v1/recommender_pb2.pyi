from coldstart.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserStateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_STATE_KIND_UNSPECIFIED: _ClassVar[UserStateKind]
    COLD: _ClassVar[UserStateKind]
    ADAPTED: _ClassVar[UserStateKind]
    DEGRADED: _ClassVar[UserStateKind]

class ItemStateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATE_KIND_UNSPECIFIED: _ClassVar[ItemStateKind]
    ITEM_STATE_TRAINED: _ClassVar[ItemStateKind]
    ITEM_STATE_COLD: _ClassVar[ItemStateKind]
    ITEM_STATE_WARMING: _ClassVar[ItemStateKind]
USER_STATE_KIND_UNSPECIFIED: UserStateKind
COLD: UserStateKind
ADAPTED: UserStateKind
DEGRADED: UserStateKind
ITEM_STATE_KIND_UNSPECIFIED: ItemStateKind
ITEM_STATE_TRAINED: ItemStateKind
ITEM_STATE_COLD: ItemStateKind
ITEM_STATE_WARMING: ItemStateKind

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "include_seen", "features", "candidate_item_ids")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    include_seen: bool
    features: _containers.ScalarMap[str, str]
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., include_seen: _Optional[bool] = ..., features: _Optional[_Mapping[str, str]] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "state", "interactions_used", "state_version", "features_used")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_USED_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_USED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    state: UserStateKind
    interactions_used: int
    state_version: int
    features_used: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., state: _Optional[_Union[UserStateKind, str]] = ..., interactions_used: _Optional[int] = ..., state_version: _Optional[int] = ..., features_used: _Optional[_Iterable[str]] = ...) -> None: ...

class EventRejection(_message.Message):
    __slots__ = ("index", "event_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[EventRejection]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[EventRejection, _Mapping]]] = ...) -> None: ...

class GetUserStateRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UserState(_message.Message):
    __slots__ = ("user_id", "state", "history_length", "state_version", "model_version", "updated_at_ms", "profile")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: UserStateKind
    history_length: int
    state_version: int
    model_version: str
    updated_at_ms: int
    profile: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[_Union[UserStateKind, str]] = ..., history_length: _Optional[int] = ..., state_version: _Optional[int] = ..., model_version: _Optional[str] = ..., updated_at_ms: _Optional[int] = ..., profile: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertUserRequest(_message.Message):
    __slots__ = ("user_id", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    features: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., features: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertUserResponse(_message.Message):
    __slots__ = ("profile", "features_used", "state_version")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_USED_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    profile: _containers.ScalarMap[str, str]
    features_used: _containers.RepeatedScalarFieldContainer[str]
    state_version: int
    def __init__(self, profile: _Optional[_Mapping[str, str]] = ..., features_used: _Optional[_Iterable[str]] = ..., state_version: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UserFeature(_message.Message):
    __slots__ = ("name", "values", "rule")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    rule: str
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., rule: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "items", "dim", "user_features", "item_features", "live_items")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ITEM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    LIVE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    items: int
    dim: int
    user_features: _containers.RepeatedCompositeFieldContainer[UserFeature]
    item_features: _containers.RepeatedScalarFieldContainer[str]
    live_items: int
    def __init__(self, model_version: _Optional[str] = ..., items: _Optional[int] = ..., dim: _Optional[int] = ..., user_features: _Optional[_Iterable[_Union[UserFeature, _Mapping]]] = ..., item_features: _Optional[_Iterable[str]] = ..., live_items: _Optional[int] = ...) -> None: ...

class FeatureValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemUpsert(_message.Message):
    __slots__ = ("item_id", "features", "text", "available")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValues, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    features: _containers.MessageMap[str, FeatureValues]
    text: str
    available: bool
    def __init__(self, item_id: _Optional[str] = ..., features: _Optional[_Mapping[str, FeatureValues]] = ..., text: _Optional[str] = ..., available: _Optional[bool] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemUpsert]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemUpsert, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("accepted", "registered", "retired")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    registered: int
    retired: int
    def __init__(self, accepted: _Optional[int] = ..., registered: _Optional[int] = ..., retired: _Optional[int] = ...) -> None: ...

class GetItemStateRequest(_message.Message):
    __slots__ = ("item_id",)
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    def __init__(self, item_id: _Optional[str] = ...) -> None: ...

class ItemState(_message.Message):
    __slots__ = ("item_id", "state", "interactions", "registered_at_ms", "features", "text", "available", "model_version")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValues, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    state: ItemStateKind
    interactions: int
    registered_at_ms: int
    features: _containers.MessageMap[str, FeatureValues]
    text: str
    available: bool
    model_version: str
    def __init__(self, item_id: _Optional[str] = ..., state: _Optional[_Union[ItemStateKind, str]] = ..., interactions: _Optional[int] = ..., registered_at_ms: _Optional[int] = ..., features: _Optional[_Mapping[str, FeatureValues]] = ..., text: _Optional[str] = ..., available: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...
