"""The evaluation protocol's user split and support/query episodes (DESIGN.md).

Users are split by a seeded hash of their raw id, so a user's side of the
split never depends on which other users are in the file. Each user's
interactions are put in protocol order once (time order, or a seeded shuffle
when the data has no time); the first k form the support set, the rest the query.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from trainer.data import Dataset

SPLIT_SHARES = (0.7, 0.1, 0.2)  # meta-train / validation / test


@dataclass(frozen=True)
class UserSplit:
    train: np.ndarray  # (n_train,) user indices
    valid: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Sequences:
    """Every user's interactions in protocol order, flattened CSR-style."""

    items: np.ndarray  # (N,) item index, grouped by user, each group in protocol order
    ratings: np.ndarray | None  # (N,) rating aligned with items, None for implicit data
    offsets: np.ndarray  # (n_users + 1,) start of each user's group

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]


@dataclass(frozen=True)
class Support:
    """A batch of padded support sets: the input of the inner loop. S >= 1 (an empty
    support set is one masked-out pad), as the inner loop's gathers need."""

    items: torch.Tensor  # (B, S) int64, padded with 0
    mask: torch.Tensor  # (B, S) float32, 1 for a real interaction
    ratings: torch.Tensor  # (B, S) float32, 0 where padded or implicit
    rated: torch.Tensor  # (B, S) float32, 1 where `ratings` holds a known rating
    user_features: torch.Tensor  # (B, F) int64 side-feature codes, 0 = unknown

    def to(self, device: torch.device | str) -> Support:
        return Support(*(t.to(device) for t in vars(self).values()))

    def without_features(self) -> Support:
        """The same support sets with every side feature unknown: how the service adapts a
        user, from events that carry none."""
        return replace(self, user_features=torch.zeros_like(self.user_features))

    def events(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) of every real support event: pads (item 0) left out, as a real
        item 0 must not be undone by a pad written after it."""
        rows, cols = torch.nonzero(self.mask, as_tuple=True)
        return rows, self.items[rows, cols]


def unit_hash(seed: int, user_id: str) -> float:
    """A position in [0, 1) for an id: the same for the same id and seed, on any machine."""
    digest = hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_users(data: Dataset, seed: int) -> UserSplit:
    position = np.array([unit_hash(seed, uid) for uid in data.user_ids])
    train_end, valid_end = SPLIT_SHARES[0], SPLIT_SHARES[0] + SPLIT_SHARES[1]
    return UserSplit(
        train=np.flatnonzero(position < train_end),
        valid=np.flatnonzero((position >= train_end) & (position < valid_end)),
        test=np.flatnonzero(position >= valid_end),
    )


def protocol_order(data: Dataset, seed: int) -> Sequences:
    """Time order where the data has time (ties kept in file order), else a seeded shuffle."""
    if data.timestamps is not None:
        within_user = data.timestamps
    else:
        within_user = np.random.default_rng(seed).permutation(len(data.users))
    order = np.lexsort((within_user, data.users))
    counts = np.bincount(data.users, minlength=data.n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    ratings = None if data.ratings is None else data.ratings[order]
    return Sequences(items=data.items[order], ratings=ratings, offsets=offsets)


def user_feature_matrix(data: Dataset) -> np.ndarray:
    """(n_users, F) int64 codes, columns in sorted feature-name order."""
    names = sorted(data.user_features)
    if not names:
        return np.zeros((data.n_users, 0), dtype=np.int64)
    return np.stack([data.user_features[n] for n in names], axis=1).astype(np.int64)


def support_batch(
    seqs: Sequences, users: np.ndarray, ks: np.ndarray, features: np.ndarray
) -> Support:
    """The first ks[b] interactions of users[b], padded to the largest k."""
    width = max(int(ks.max()), 1) if len(ks) else 1
    starts = seqs.offsets[users]
    cols = np.arange(width)
    mask = cols[None, :] < ks[:, None]  # (B, S)
    index = np.where(mask, starts[:, None] + cols[None, :], 0)
    items = np.where(mask, seqs.items[index], 0)
    ratings = np.zeros(mask.shape, np.float32)
    rated = np.zeros(mask.shape, np.float32)
    if seqs.ratings is not None:
        ratings = np.where(mask, seqs.ratings[index], 0.0).astype(np.float32)
        rated = mask.astype(np.float32)
    return Support(
        items=torch.from_numpy(items.astype(np.int64)),
        mask=torch.from_numpy(mask.astype(np.float32)),
        ratings=torch.from_numpy(ratings),
        rated=torch.from_numpy(rated),
        user_features=torch.from_numpy(features[users]),
    )


def positions_after(
    seqs: Sequences, users: np.ndarray, ks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(b, position in seqs) of every interaction of users[b] after its first ks[b], flat
    and in order: the dense form of query_sets, for building tensors in one step."""
    starts = seqs.offsets[users] + ks
    lengths = seqs.offsets[users + 1] - starts  # (B,)
    row_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    positions = np.arange(lengths.sum()) + np.repeat(starts - row_starts, lengths)
    return np.repeat(np.arange(len(users)), lengths), positions


def query_sets(seqs: Sequences, users: np.ndarray, ks: np.ndarray) -> list[np.ndarray]:
    """Everything after the first ks[b] interactions of users[b]."""
    return [
        seqs.items[seqs.offsets[u] + k : seqs.offsets[u + 1]]
        for u, k in zip(users, ks, strict=True)
    ]


def min_length(max_k: int) -> int:
    """Interactions a test or validation user needs: a support set of every size up to max_k
    and still 5 left to ask for, so that every k is measured on the same users."""
    return max_k + 5


def eligible_test_users(seqs: Sequences, split: UserSplit, max_k: int) -> np.ndarray:
    return split.test[seqs.lengths[split.test] >= min_length(max_k)]
