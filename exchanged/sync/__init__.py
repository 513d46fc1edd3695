"""The sync runner: carries the engine's plans out through the ports."""

from .runner import PUBLIC_FOLDER_USER, SyncRunner, utcnow

__all__ = ["PUBLIC_FOLDER_USER", "SyncRunner", "utcnow"]
