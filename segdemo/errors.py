"""User-facing errors: one sentence that names the cause and the remedy."""


class SegdemoError(Exception):
    """An error whose message is meant for the user as it is (no traceback)."""


class BadImageError(SegdemoError):
    """The input could not be used as an image."""


class ModelNotFoundError(SegdemoError):
    """The model could not be loaded from the hub or a local directory."""


class EngineUnavailableError(SegdemoError):
    """The engine serving this process (a Triton server) did not answer; its message is for the operator."""
