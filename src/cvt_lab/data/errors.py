"""The data package's error for sources that cannot be loaded."""


class DataSourceError(RuntimeError):
    """A dataset that cannot be loaded; the message says which, why, and how to fix it."""
