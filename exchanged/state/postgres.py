"""The PostgreSQL state store: several daemon nodes share one database and split the users.

Leases: a row per mailbox with the holder and an expiry taken from the database server's clock
(``now()``), so the nodes' own clocks never matter. ``try_lease`` is one atomic
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement: it takes a free or expired lease or
renews the node's own, and reports whether the node holds it afterwards. A dead node's leases
expire after their TTL and are then taken over by another node. ``lease_holders`` lists the
unexpired ones (``exchangectl status`` shows a user another node holds).
"""

from __future__ import annotations

from exchanged import errors
from exchanged.db import DbUrl, Tx
from exchanged.state.store import Flavor, Lease, SqlStateStore

_LOCK_ID = 0x65786364  # advisory lock that serialises schema migrations of nodes starting together

_HINT = ("check state.url (host, port, database, user, password) and that PostgreSQL is up and "
         "accepts connections from this host")


class PostgresFlavor(Flavor):
    def try_lease(self, tx: Tx, mailbox: str, node: str, ttl_s: float) -> bool:
        rows = tx.query(
            "INSERT INTO leases (mailbox, node, expires_at) "
            "VALUES (?, ?, now() + make_interval(secs => ?)) "
            "ON CONFLICT (mailbox) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at "
            "WHERE leases.node = excluded.node OR leases.expires_at <= now() "
            "RETURNING node", (mailbox, node, float(ttl_s)))
        return bool(rows)

    def release_lease(self, tx: Tx, mailbox: str, node: str) -> None:
        tx.query("DELETE FROM leases WHERE mailbox = ? AND node = ?", (mailbox, node))

    @property
    def keeps_leases(self) -> bool:
        return True

    def lease_holders(self, tx: Tx) -> dict[str, Lease]:
        rows = tx.query("SELECT mailbox, node, expires_at FROM leases WHERE expires_at > now() "
                        "ORDER BY mailbox")
        return {mailbox: Lease(node, expires_at) for mailbox, node, expires_at in rows}

    def lock_migrations(self, tx: Tx) -> None:
        tx.query("SELECT pg_advisory_xact_lock(?)", (_LOCK_ID,))


FLAVOR = PostgresFlavor("postgres", serial_pk="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                        lease_time="TIMESTAMPTZ")


async def open_postgres_state(url: DbUrl) -> SqlStateStore:
    """Connect to and migrate a PostgreSQL state database (the schema lives in the search path)."""
    return await SqlStateStore.open(url, FLAVOR, lambda msg: errors.StateError(msg, hint=_HINT))


__all__ = ["FLAVOR", "PostgresFlavor", "open_postgres_state"]
