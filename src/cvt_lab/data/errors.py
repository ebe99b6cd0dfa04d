"""The data package's error for sources that cannot be loaded; data errors keep their own message
when a DataLoader worker raises them."""

WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


def own_message(cls: type, message: str) -> str:
    """The error's own message. An error raised in a DataLoader worker is raised again in the
    main process as ``cls("Caught <name> in DataLoader worker process <n>.\\nOriginal
    Traceback ...")``: the worker's whole traceback with the message last; keep the message."""
    if not message.startswith("Caught ") or WORKER_TRACEBACK not in message:
        return message
    return message.rpartition(f"{cls.__module__}.{cls.__qualname__}: ")[2].rstrip("\n")


class DataSourceError(RuntimeError):
    """A dataset that cannot be loaded; the message says which, why, and how to fix it."""

    def __init__(self, message: str = "") -> None:
        super().__init__(own_message(type(self), message))
