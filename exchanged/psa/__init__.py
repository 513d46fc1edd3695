"""PSA connectors: ``sql`` (the documented schema in SQLite/PostgreSQL) and ``autotask`` (REST).

``open_connector(psa_cfg)`` is the factory the daemon calls with the ``psa`` section of the config.
"""

from __future__ import annotations

from typing import Any

import structlog

from exchanged import errors, ports

log = structlog.get_logger("exchanged.psa")


async def open_connector(psa_cfg: Any) -> ports.PsaConnector:
    """The connector ``psa_cfg.connector`` names ("sql" or "autotask")."""
    connector = getattr(psa_cfg, "connector", "sql")
    if connector == "sql":
        from exchanged.psa.sql import open_sql_connector

        sql = open_sql_connector(psa_cfg.url, listen_channel=getattr(psa_cfg, "listen_channel", None))
        try:  # existing tables that do not fit are named now (start, reload), not in a cycle
            await sql.open()
        except errors.PsaUnavailable as exc:  # down now: the cycles report it, and retry
            log.warning("the PSA database cannot be opened now", error=errors.present(exc).line())
        except BaseException:
            await sql.aclose()
            raise
        return sql
    if connector == "autotask":
        from exchanged.psa.autotask import open_autotask

        return open_autotask(psa_cfg)
    raise errors.PsaError(f"psa.connector: unknown connector {connector!r}",
                          hint="use psa.connector: sql or autotask")


__all__ = ["open_connector"]
