"""Exception types raised by the library. The CLI turns every RelxferError into a one-line message and exit code 2."""


class RelxferError(Exception):
    """Base class for errors caused by the user's input or environment (not by bugs)."""


class SpecError(RelxferError):
    """The spec file is malformed, violates the schema or is inconsistent."""


class DataError(RelxferError):
    """A data source is missing, unreadable or inconsistent."""


class ModelError(RelxferError):
    """A model cannot be found or loaded."""


class TrackingError(RelxferError):
    """The MLflow tracking server cannot be reached or refuses a request."""


class RelxferWarning(UserWarning):
    """A warning of relxfer's own: the CLI shows these, and hides the libraries' unless --debug."""
