"""The control protocol of exchanged: framing, dispatch, and the Unix socket server.

Layout (transport separate from dispatch):

* ``protocol`` - stdlib only: limits, error codes and reasons, the method table with its
  parameters, line framing, JSON encoding. ``exchangectl`` imports only this, so it starts fast.
* ``rpc`` - ``ControlHandler`` (what the daemon implements) and the pure
  ``dispatch(handler, request) -> response``; no sockets.
* ``server`` - ``serve_control()``: the trio Unix socket server with the peer-credential check,
  per-connection limits and timeouts.

The names below are imported lazily so that ``import exchanged.control.protocol`` (the client's
import) does not pull in trio and structlog.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exchanged.control.protocol import (
        MAX_LINE_BYTES,
        METHODS,
        ProtocolError,
        decode_line,
        encode_message,
        error_response,
    )
    from exchanged.control.rpc import ControlHandler, dispatch, handle_line
    from exchanged.control.server import (
        PeerCheck,
        PeerCredentials,
        ServerLimits,
        make_peer_check,
        read_peer_credentials,
        serve_control,
        serve_stream,
    )

_LAZY = {
    "ControlHandler": "rpc",
    "dispatch": "rpc",
    "handle_line": "rpc",
    "MAX_LINE_BYTES": "protocol",
    "METHODS": "protocol",
    "ProtocolError": "protocol",
    "decode_line": "protocol",
    "encode_message": "protocol",
    "error_response": "protocol",
    "PeerCheck": "server",
    "PeerCredentials": "server",
    "ServerLimits": "server",
    "make_peer_check": "server",
    "read_peer_credentials": "server",
    "serve_control": "server",
    "serve_stream": "server",
}

__all__ = [
    "MAX_LINE_BYTES",
    "METHODS",
    "ControlHandler",
    "PeerCheck",
    "PeerCredentials",
    "ProtocolError",
    "ServerLimits",
    "decode_line",
    "dispatch",
    "encode_message",
    "error_response",
    "handle_line",
    "make_peer_check",
    "read_peer_credentials",
    "serve_control",
    "serve_stream",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exchanged.control' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"exchanged.control.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value
