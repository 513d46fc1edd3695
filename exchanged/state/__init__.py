"""State stores: SQLite (default, one node) and PostgreSQL (several nodes, leases).

``open_state_store(url)`` is the factory the daemon calls with ``state.url``; see docs/STATE.md.
"""

from __future__ import annotations

from exchanged import errors, ports
from exchanged.db import POSTGRES, UrlError, mask_url, parse_url


async def open_state_store(url: str) -> ports.StateStore:
    """Open the state database named by a SQLAlchemy-style URL, creating/migrating its schema.

    Raises ``StateError`` (naming the URL with its password masked, and what to do) when the URL is
    unusable, the database cannot be reached, is damaged, or was written by a newer exchanged.
    """
    try:
        parsed = parse_url(url)
    except UrlError as exc:
        raise errors.StateError(f"state.url: {exc}", hint="fix state.url") from None
    if parsed.dialect == POSTGRES:
        from exchanged.state.postgres import open_postgres_state

        return await open_postgres_state(parsed)
    from exchanged.state.sqlite import open_sqlite_state

    return await open_sqlite_state(parsed)


__all__ = ["mask_url", "open_state_store"]
