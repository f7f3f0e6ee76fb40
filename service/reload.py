"""Picks up a new model from the model directory while serving: no restart, no lost state.

Why a poll of the manifest: the trainer Job writes its artifact into the volume
the service reads (weights first, manifest last, each replaced atomically), and
reading one small JSON file every few seconds works on every kind of volume,
where file-change notification does not (NFS, object-store mounts). A torn or
corrupt artifact fails `load()`'s checks: it is logged, the old model keeps
serving, and the next poll tries again. Users adapted under the old version are
re-adapted from their stored history on their next read or event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from service.model import Retrieval, ServingModel
from trainer import artifact
from trainer.errors import ArtifactError

logger = logging.getLogger(__name__)


class ModelReloader:
    """Calls `on_model` with each new model version that appears in `model_dir`."""

    def __init__(
        self,
        model_dir: Path,
        current: str,
        on_model: Callable[[ServingModel], None],
        retrieval: Retrieval | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.retrieval = retrieval
        self.current = current
        self.on_model = on_model
        self._refused: str | None = None  # the last refusal, logged once

    def run(self, interval_s: float, stopping: threading.Event) -> None:
        while not stopping.wait(interval_s):
            self.check()

    def check(self) -> bool:
        """Loads the directory's model if its version is new; True when it was swapped in."""
        try:
            if artifact.version_of(self.model_dir) == self.current:
                return False
            model = ServingModel(artifact.load(self.model_dir), self.retrieval)
        except ArtifactError as error:
            if str(error) != self._refused:
                logger.warning("new model refused, still serving %s: %s", self.current, error)
                self._refused = str(error)
            return False
        logger.info("model %s replaces %s", model.version, self.current)
        self.current, self._refused = model.version, None
        self.on_model(model)
        return True
