"""Secrets and TLS end to end, with the real daemon process at debug logging.

* The EWS password (and its Basic-auth base64 forms) appears in no log line, status or history
  answer, error text or mail, through good cycles, faults, a failed login after a reload and stop.
* A server certificate from an untrusted CA, for another host name, or expired: the user's cycle
  fails with the operator-readable reason in status, log and mail (the adapter-level wording is
  tested in tests/exchange/test_tls.py). Plain http without ``allow_plaintext`` is refused by the
  config (tests/config/test_rules.py::test_plaintext); here: the daemon refuses to start on it.
"""

from __future__ import annotations

import base64
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from exchanged.psa.sample import seed_sample
from exchanged.testing.smtp import SmtpSink
from tests.daemon.harness import body_of, rpc, wait_until
from tests.exchange.test_tls import tls_listener
from tests.reliability.harness import ALICE, PASSWORD, SVC, make_env, running

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]


def _forms(secret: str, user: str) -> list[str]:
    return [secret, base64.b64encode(f"{user}:{secret}".encode()).decode(),
            base64.b64encode(secret.encode()).decode().rstrip("=")]


def test_password_never_shown_anywhere(tmp_path: Path, smtp: SmtpSink) -> None:
    seed_sample(f"sqlite:///{tmp_path / 'psa.db'}", datetime.now(UTC).replace(microsecond=0))
    seen: list[str] = []
    with running(tmp_path) as server:
        env = make_env(tmp_path, server, smtp, "d", logging={"format": "json", "level": "debug"},
                       notifications={"email": "ops@example.test",
                                      "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none",
                                               "from": "exchanged@example.test"}})
        env.start()
        env.notify.wait_for("READY=1")
        wait_until(lambda: env.outcomes() >= 1, "the first cycle")
        server.set_faults(throttle_next=1, back_off_ms=100, fail_next=1)
        seen.append(json.dumps(rpc(env.socket_path, "sync", {"mailboxes": [ALICE], "wait": True})))
        seen.append(json.dumps(rpc(env.socket_path, "status")))
        seen.append(json.dumps(rpc(env.socket_path, "history", {"mailbox": ALICE})))
        # a wrong password after a reload: a failed login, mailed
        wrong = "Wr0ng-" + PASSWORD
        (env.base / "ews-password").write_text(wrong + "\n")
        env.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: (rpc(env.socket_path, "status")["config"].get("last_reload") or {}).get("result"),
                   "the reload")
        try:
            seen.append(json.dumps(rpc(env.socket_path, "sync", {"mailboxes": [ALICE], "wait": True})))
        except Exception as exc:  # a refused sync is an answer too
            seen.append(str(exc))
        status = rpc(env.socket_path, "status")
        seen.append(json.dumps(status))
        failed = next(u for u in status["users"] if u["mailbox"] == ALICE)
        assert failed["last_result"] == "error" and failed["last_error"], failed  # the login failed
        wait_until(lambda: [m for m in smtp.messages
                            if ALICE in body_of(m) and "login" in body_of(m).lower()], "a login mail")
        assert env.stop() == 0
        env.notify.close()
    seen.append(env.stderr())
    seen += [str(m) + body_of(m) for m in smtp.messages]
    text = "\n".join(seen)
    assert "Traceback" not in text
    # logging.level debug was accepted (third-party libraries stay at warning: exchangelib's debug
    # lines carry the Authorization header)
    for secret in _forms(PASSWORD, SVC) + _forms(wrong, SVC):
        assert secret not in text, f"a form of the password is shown: {secret[:4]}..."


def _tls_case(tmp_path: Path, smtp: SmtpSink, leaf: trustme.LeafCert, ca: trustme.CA | None,
              want: str) -> tuple[str, str]:
    seed_sample(f"sqlite:///{tmp_path / 'psa.db'}", datetime.now(UTC).replace(microsecond=0))
    with running(tmp_path / "srv") as server, tls_listener(leaf) as port:
        env = make_env(tmp_path, server, smtp, "d")
        bundle = None
        if ca is not None:
            bundle = tmp_path / "ca.pem"
            ca.cert_pem.write_to_path(str(bundle))
        env.extra["server"] = {"address": "localhost", "port": port, "version": "Exchange2016",
                               **({"ca_bundle": str(bundle)} if bundle else {})}
        env.write_config()
        env.start()
        env.notify.wait_for("READY=1")
        user = wait_until(lambda: next((u for u in rpc(env.socket_path, "status")["users"]
                                        if u["mailbox"] == ALICE and u.get("last_error")), None),
                          "the failed cycle")
        mails = wait_until(lambda: [m for m in smtp.messages if want in body_of(m)], "the error mail")
        assert env.stop() == 0
        env.notify.close()
    err = env.stderr()
    assert "Traceback" not in err
    return str(user["last_error"]), "\n".join(body_of(m) for m in mails)


@pytest.mark.parametrize("case", ["untrusted", "wrong-host", "expired"])
def test_bad_certificates_are_refused_with_a_reason(tmp_path: Path, smtp: SmtpSink, case: str) -> None:
    ca, other = trustme.CA(), trustme.CA()
    past = datetime.now(UTC) - timedelta(days=30)
    leaf: Any = {
        "untrusted": ca.issue_cert("localhost"),
        "wrong-host": ca.issue_cert("mail.other.test"),
        "expired": ca.issue_cert("localhost", not_before=past - timedelta(days=365), not_after=past),
    }[case]
    trusted = other if case == "untrusted" else ca
    want = {"untrusted": "certificate not trusted", "wrong-host": "another host name",
            "expired": "has expired"}[case]
    error, mail = _tls_case(tmp_path, smtp, leaf, trusted, want)
    assert want in error, error
    assert want in mail, mail


def test_plain_http_refused_without_allow_plaintext(tmp_path: Path, smtp: SmtpSink) -> None:
    with running(tmp_path) as server:
        env = make_env(tmp_path, server, smtp, "d")
        env.extra["server"] = {"address": "localhost", "port": 80, "version": "Exchange2016"}
        env.write_config()
        proc = env.start()
        assert proc.wait(timeout=60) == 1
        env.notify.close()
    err = env.stderr()
    assert "allow_plaintext" in err and "Traceback" not in err, err
