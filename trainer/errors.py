"""The trainer's domain errors: each carries a message a user can act on."""


class ColdstartError(Exception):
    """Base of every error the CLI reports as one line with exit code 2."""


class DataError(ColdstartError):
    """Input data is missing or malformed; the message names file, line and problem."""


class ArtifactError(ColdstartError):
    """A model artifact is missing, corrupt, truncated or does not match what loads it."""
