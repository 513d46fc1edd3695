"""The bundled servers (EWS, Autotask, SMTP sink) behind ``exchanged demo`` and the tests.

They need the ``testing`` extra (trustme for their throw-away CA, aiosmtpd for the SMTP sink), which
the daemon itself does not: ``pip install 'exchanged[testing]'`` (a checkout's ``scripts/bootstrap``
installs it). The Debian package leaves it out; see docs/OPERATIONS.md "The demo and the test servers".
"""

from __future__ import annotations

TESTING_EXTRA = ("trustme", "aiosmtpd")


def testing_extra_missing(exc: ModuleNotFoundError) -> ModuleNotFoundError:
    """The error to raise instead of a bare "No module named trustme": what is missing and how to get it."""
    package = (exc.name or "a dependency").split(".")[0]
    return ModuleNotFoundError(
        f"{package} is not installed: the demo and the test servers (exchanged.testing) need the "
        f"'testing' extra: pip install 'exchanged[testing]' (from a checkout: ./scripts/bootstrap). "
        f"The Debian package does not include it: run the demo and the test servers from a checkout.",
        name=package,
    )
