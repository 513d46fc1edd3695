"""exchanged: keep a PSA's scheduling data in sync with on-premises Exchange mailboxes over EWS."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1  # control protocol; bump on incompatible changes (see docs/PROTOCOL.md)
