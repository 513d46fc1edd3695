"""Error, resolved and confirmation mails against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
import trio
import trio.lowlevel
import trio.testing
import trustme

from exchanged.config import load_config
from exchanged.errors import AuthFailed, ExchangeUnavailable, MailError, Presented, present
from exchanged.notify import Notifier, SmtpMailer, cause_key, error_key, serve_notifier
from exchanged.testing.smtp import SmtpSink
from tests.config.helpers import base, write_config

OPS = ("ops@contoso.com", "lead@contoso.com")
LOGIN = present(AuthFailed("login refused", mailbox="alice@contoso.com"))
DOWN = present(ExchangeUnavailable("Exchange server mail.contoso.com unreachable"))


class FakeWall:
    """Wall-clock time shown in mails, moved by the tests together with the trio clock."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 4, 10, 3, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def closed_port() -> int:
    """A loopback port nobody listens on (bound, never listened, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def make(sink_port: int, **kwargs: object) -> Notifier:
    mailer = SmtpMailer("127.0.0.1", sink_port, "none", "exchanged@contoso.com", timeout=10)
    return Notifier(mailer, OPS, "Contoso on-prem", 240, hostname="sync01", **kwargs)  # type: ignore[arg-type]


async def test_one_mail_per_distinct_error_per_interval(
    sink: SmtpSink, autojump_clock: trio.testing.MockClock
) -> None:
    wall = FakeWall()
    notifier = make(sink.port, wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_notifier, notifier)
        key = error_key(LOGIN, "alice@contoso.com")
        assert notifier.error(key, LOGIN, "alice@contoso.com") is True
        for _ in range(5):  # every cycle fails the same way: counted, not mailed
            await trio.sleep(15 * 60)
            wall.now += timedelta(minutes=15)
            assert notifier.error(key, LOGIN, "alice@contoso.com") is False
        assert notifier.error("exchange_unreachable:*", DOWN, None) is True  # another error: mailed
        await notifier.flush()
        assert len(sink.messages) == 2

        # 240 minutes after the first mail the same error is mailed again, with its count
        await trio.sleep(240 * 60 - 5 * 15 * 60 - 1)
        assert notifier.error(key, LOGIN, "alice@contoso.com") is False
        await trio.sleep(1)
        wall.now += timedelta(minutes=165)
        assert notifier.error(key, LOGIN, "alice@contoso.com") is True
        await notifier.flush()
        nursery.cancel_scope.cancel()

    first, other, again = sink.messages
    assert first["Subject"] == "[exchanged Contoso on-prem] ERROR alice@contoso.com: login refused"
    assert other["Subject"] == ("[exchanged Contoso on-prem] ERROR: Exchange server mail.contoso.com "
                                "unreachable")
    assert again["Subject"] == ("[exchanged Contoso on-prem] ERROR alice@contoso.com: login refused "
                                "(still failing)")
    body = again.get_content()
    assert "Failing since:  2026-11-29 04:10:03 UTC" in body
    assert "Occurred:       8 times" in body
    assert "Mailbox:        alice@contoso.com" in body
    assert "auth_failed" in body
    assert "check credentials.username" in body  # the hint: what to check
    assert "exchangectl status" in body
    assert 'journalctl -u exchanged --since "2026-11-29 04:10:03" MAILBOX=alice@contoso.com' in body
    assert notifier.statistics().sent == 3


async def test_resolved_mail_when_a_mailed_error_clears(
    sink: SmtpSink, autojump_clock: trio.testing.MockClock
) -> None:
    wall = FakeWall()
    notifier = make(sink.port, wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com")
        notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com")
        await trio.sleep(80 * 60)
        wall.now += timedelta(minutes=80)
        assert notifier.resolved("auth_failed:alice@contoso.com") is True
        assert notifier.resolved("auth_failed:alice@contoso.com") is False  # closed already
        assert notifier.resolved("never-seen") is False
        await notifier.flush()
        # after it cleared, a new occurrence is news again: mailed at once
        assert notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com") is True
        await notifier.flush()
        nursery.cancel_scope.cancel()
    subjects = [m["Subject"] for m in sink.messages]
    assert subjects == [
        "[exchanged Contoso on-prem] ERROR alice@contoso.com: login refused",
        "[exchanged Contoso on-prem] RESOLVED alice@contoso.com: login refused",
        "[exchanged Contoso on-prem] ERROR alice@contoso.com: login refused",
    ]
    body = sink.messages[1].get_content()
    assert "Cleared at:     2026-11-29 05:30:03 UTC (after 1 h 20 min; it occurred 2 times)" in body


async def test_a_shared_cause_is_one_mail_naming_its_mailboxes_and_one_resolved(
    sink: SmtpSink, autojump_clock: trio.testing.MockClock
) -> None:
    wall = FakeWall()
    notifier = make(sink.port, wall_clock=wall)
    boxes = [f"user{n:02}@contoso.com" for n in range(25)]
    key, shared = cause_key("auth_failed", boxes[0], sync_account_login=True)
    assert (key, shared) == ("cause:auth_failed", True)
    assert cause_key("auth_failed", boxes[0], sync_account_login=False) == (
        f"user:{boxes[0]}:auth_failed", False)  # per-user credentials: that mailbox's own login
    assert cause_key("impersonation_denied", boxes[0], sync_account_login=True)[1] is False
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        for box in boxes:  # the cycles of 25 mailboxes fail for one cause within seconds
            login = present(AuthFailed(f"{box}: FindItem: the login of svc (basic) was refused",
                                       mailbox=box))
            assert notifier.error(key, login, box, shared=True) is True
            await trio.sleep(0.2)
        await trio.sleep(notifier.group_window_s)
        await notifier.flush()
        assert len(sink.messages) == 1
        for box in boxes[:-1]:  # one by one they recover: nothing to say until the last has
            assert notifier.resolved(key, box) is False
        assert notifier.resolved(key, boxes[-1]) is True
        await notifier.flush()
        nursery.cancel_scope.cancel()
    error, resolved = sink.messages
    assert error["Subject"] == ("[exchanged Contoso on-prem] ERROR (25 mailboxes): FindItem: the login of "
                                "svc (basic) was refused")
    body = error.get_content()
    assert f"25 mailboxes, one cause: {', '.join(boxes[:20])} and 5 more" in " ".join(body.split())
    assert resolved["Subject"].startswith("[exchanged Contoso on-prem] RESOLVED (25 mailboxes): FindItem")
    assert "25 mailboxes, one cause: " in " ".join(resolved.get_content().split())


async def test_a_shared_cause_that_clears_before_its_mail_is_never_mailed(
    sink: SmtpSink, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = make(sink.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        notifier.error("cause:exchange_unreachable", DOWN, "a@contoso.com", shared=True)
        assert notifier.resolved("cause:exchange_unreachable", "a@contoso.com") is False
        await trio.sleep(notifier.group_window_s * 2)
        await notifier.flush()
        nursery.cancel_scope.cancel()
    assert sink.messages == []


async def test_resolved_mailbox_closes_all_its_errors(sink: SmtpSink) -> None:
    notifier = make(sink.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com")
        notifier.error("throttled:alice@contoso.com", Presented("throttled", "busy", ""), "alice@contoso.com")
        notifier.error("exchange_unreachable:*", DOWN, None)
        assert notifier.resolved_mailbox("alice@contoso.com") == 2
        assert set(notifier.open_errors()) == {"exchange_unreachable:*"}
        await notifier.flush()
        nursery.cancel_scope.cancel()
    assert sum("RESOLVED" in str(m["Subject"]) for m in sink.messages) == 2


async def test_every_semicolon_recipient_gets_it(tmp_path: Path, sink: SmtpSink) -> None:
    text = base(tmp_path, f"""\
        notifications:
          email: "ops@contoso.com; lead@contoso.com ;oncall@contoso.com"
          smtp: {{host: 127.0.0.1, port: {sink.port}, from: exchanged@contoso.com}}
        """)
    cfg = load_config(write_config(tmp_path, text), credentials_dir="")
    notifier = Notifier.from_config(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        notifier.error("exchange_unreachable:*", DOWN)
        await notifier.flush()
        nursery.cancel_scope.cancel()
    (received,) = sink.received
    assert received.rcpt_tos == ("ops@contoso.com", "lead@contoso.com", "oncall@contoso.com")
    assert received.mail_from == "exchanged@contoso.com"
    msg = received.message
    assert msg["To"] == "ops@contoso.com, lead@contoso.com, oncall@contoso.com"
    assert msg["From"] == "exchanged@contoso.com"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert str(msg["Subject"]).startswith("[exchanged Test] ERROR")


async def test_confirmation_mail_to_the_user(sink: SmtpSink) -> None:
    notifier = make(sink.port)
    summary = "- PSA appointments are copied to your Exchange calendar\n- PSA to-dos are copied to your tasks"
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        assert notifier.confirm_user("jdoe@contoso.com", summary) is True
        await notifier.flush()
        nursery.cancel_scope.cancel()
    (received,) = sink.received
    assert received.rcpt_tos == ("jdoe@contoso.com",)
    msg = received.message
    assert msg["Subject"] == ("[exchanged Contoso on-prem] Your mailbox jdoe@contoso.com "
                              "is now synced with the PSA")
    body = msg.get_content()
    assert summary in body
    assert "users[].settings" in body  # the instructions: how to change what is synced
    assert "ops@contoso.com, lead@contoso.com" in body  # whom to ask


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, str(ca_file)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_starttls_and_tls(tmp_path: Path, security: str) -> None:
    server_ctx, ca_file = _tls_pair(tmp_path)
    with SmtpSink(security=security, tls_context=server_ctx) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, security, "exchanged@contoso.com",  # type: ignore[arg-type]
                            ca_file=ca_file, timeout=10)
        await mailer.send(["ops@contoso.com"], "tls test", "hello over TLS")
        (msg,) = sink.messages
        assert msg["Subject"] == "tls test"
        assert msg.get_content().strip() == "hello over TLS"


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_untrusted_certificate_is_refused(tmp_path: Path, security: str) -> None:
    server_ctx, _ca_file = _tls_pair(tmp_path)
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with SmtpSink(security=security, tls_context=server_ctx) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, security, "exchanged@contoso.com",  # type: ignore[arg-type]
                            ca_file=str(other_ca), timeout=10)
        with pytest.raises(MailError) as info:
            await mailer.send(["ops@contoso.com"], "x", "y")
        assert "not trusted" in info.value.message
        assert "ca_file" in info.value.hint
        assert sink.messages == []


async def test_starttls_required_but_not_offered(tmp_path: Path, sink: SmtpSink) -> None:
    mailer = SmtpMailer("127.0.0.1", sink.port, "starttls", "exchanged@contoso.com", timeout=10)
    with pytest.raises(MailError) as info:
        await mailer.send(["ops@contoso.com"], "x", "y")
    assert "does not offer STARTTLS" in info.value.message


async def test_smtp_down_raises_mail_error_naming_the_server() -> None:
    port = closed_port()
    mailer = SmtpMailer("127.0.0.1", port, "none", "exchanged@contoso.com", timeout=10)
    with pytest.raises(MailError) as info:
        await mailer.send(["ops@contoso.com"], "x", "y")
    assert f"cannot connect to SMTP server 127.0.0.1:{port}" in info.value.message
    assert info.value.reason == "mail_failed"


async def test_smtp_down_is_logged_not_raised_and_retried(sink: SmtpSink) -> None:
    notifier = Notifier(SmtpMailer("127.0.0.1", closed_port(), timeout=10), OPS, "Contoso on-prem", 240,
                        hostname="sync01")
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.serve)
            assert notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com") is True
            await notifier.flush()
            failures = [e for e in logs if e["event"] == "mail not sent"]
            assert len(failures) == 1
            assert "cannot connect to SMTP server" in failures[0]["error"]
            assert failures[0]["log_level"] == "warning"
            assert notifier.statistics().failed == 1
            # nobody was told: the error is re-armed, so its next occurrence is tried again, and a
            # RESOLVED mail would not be owed
            notifier.configure(mailer=SmtpMailer("127.0.0.1", sink.port, timeout=10), recipients=OPS,
                               profile_name="Contoso on-prem", repeat_after_minutes=240)
            assert notifier.error("auth_failed:alice@contoso.com", LOGIN, "alice@contoso.com") is True
            await notifier.flush()
            nursery.cancel_scope.cancel()
    assert [m["Subject"] for m in sink.messages] == [
        "[exchanged Contoso on-prem] ERROR alice@contoso.com: login refused"
    ]


async def test_reconfigure_from_a_reloaded_config(tmp_path: Path, sink: SmtpSink) -> None:
    old = load_config(write_config(tmp_path, base(tmp_path)), credentials_dir="")
    notifier = Notifier.from_config(old)
    assert notifier.error("k", DOWN) is False  # no notifications.email: nothing to mail
    new = load_config(write_config(tmp_path, base(tmp_path, f"""\
        profile_name: Renamed
        notifications:
          email: ops@contoso.com
          smtp: {{host: 127.0.0.1, port: {sink.port}}}
        """).replace("profile_name: Test\n", "")), credentials_dir="")
    notifier.reconfigure(new)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        assert notifier.error("k", DOWN) is True
        await notifier.flush()
        nursery.cancel_scope.cancel()
    assert str(sink.messages[0]["Subject"]).startswith("[exchanged Renamed] ERROR")


async def test_full_queue_drops_with_a_log_line_and_never_blocks() -> None:
    notifier = Notifier(None, OPS, "P", 240, queue_size=1, hostname="h")
    with structlog.testing.capture_logs() as logs:
        assert notifier.error("a", DOWN) is True
        assert notifier.error("b", DOWN) is False  # the sender is not running: the queue is full
    assert notifier.statistics().dropped == 1
    assert any(e["event"] == "mail queue full: mail dropped" for e in logs)
    # the dropped error is not marked as mailed: its next occurrence is tried again
    assert notifier.open_errors() == {"a": 1, "b": 1}


async def test_multiline_message_makes_a_one_line_subject(sink: SmtpSink) -> None:
    notifier = make(sink.port)
    presented = Presented("config_invalid", "reload of /etc/exchanged/exchanged.yaml rejected:\n"
                          "x.yaml:4: sync_interval_minutes: must be >= 10\nBcc: evil@example.com", "fix it")
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        notifier.error("config", presented, None)
        await notifier.flush()
        nursery.cancel_scope.cancel()
    (received,) = sink.received
    assert received.rcpt_tos == OPS  # no header injection
    assert received.message["Subject"] == ("[exchanged Contoso on-prem] ERROR: reload of "
                                           "/etc/exchanged/exchanged.yaml rejected:")
    assert "  x.yaml:4: sync_interval_minutes: must be >= 10" in received.message.get_content()


def test_sink_standalone(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exchanged.testing.smtp", "--port", "0", "--maildir", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["host"] == "127.0.0.1"
        mailer = SmtpMailer("127.0.0.1", ready["port"], timeout=10)
        trio.run(mailer.send, ["ops@contoso.com"], "demo mail", "body")
        line = json.loads(proc.stdout.readline())
        assert line["subject"] == "demo mail" and line["to"] == ["ops@contoso.com"]
        assert Path(line["file"]).read_bytes().count(b"demo mail") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class HangingMailer:
    """An SMTP server that never answers, as a Mailer: send() waits until cancelled."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, to: object, subject: str, body: str) -> None:
        self.calls += 1
        await trio.sleep_forever()


async def test_a_hanging_smtp_server_never_blocks_the_caller(autojump_clock: trio.testing.MockClock) -> None:
    mailer = HangingMailer()
    notifier = Notifier(mailer, OPS, "P", 240, queue_size=4, hostname="h")
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        for i in range(10):  # ten cycles report ten distinct errors while the first mail hangs
            notifier.error(f"reason{i}:*", DOWN)
            await trio.lowlevel.checkpoint()
        assert mailer.calls == 1
        stats = notifier.statistics()
        assert stats.dropped == 10 - 1 - 4  # one being sent, four queued, the rest dropped
        assert notifier.open_errors() == {f"reason{i}:*": 1 for i in range(10)}
        nursery.cancel_scope.cancel()


async def test_smtp_login_from_the_config(tmp_path: Path) -> None:
    server_ctx, ca_file = _tls_pair(tmp_path)
    users = {"relay@contoso.com": "S3cret-x"}
    with SmtpSink(security="starttls", tls_context=server_ctx, users=users) as sink:
        (tmp_path / "smtp-password").write_text("S3cret-x\n")
        (tmp_path / "smtp-password").chmod(0o600)
        text = base(tmp_path, f"""\
            notifications:
              email: ops@contoso.com
              smtp: {{host: 127.0.0.1, port: {sink.port}, security: starttls, ca_file: {ca_file},
                      from: exchanged@contoso.com, username: relay@contoso.com,
                      password_file: {tmp_path / 'smtp-password'}}}
            """)
        cfg = load_config(write_config(tmp_path, text), credentials_dir="")
        mailer = SmtpMailer.from_config(cfg.notifications.smtp)
        assert "S3cret" not in repr(cfg.notifications.smtp)
        assert mailer.probe() == "connected, STARTTLS, logged in as relay@contoso.com"
        assert sink.messages == []  # the probe sends nothing
        await mailer.send(["ops@contoso.com"], "auth test", "sent after a login")
        assert [m["Subject"] for m in sink.messages] == ["auth test"]
        assert sink.logins == ["relay@contoso.com", "relay@contoso.com"]
        wrong = SmtpMailer("127.0.0.1", sink.port, "starttls", "exchanged@contoso.com", ca_file=ca_file,
                           timeout=10, username="relay@contoso.com", password="nope")
        with pytest.raises(MailError) as info:
            await wrong.send(["ops@contoso.com"], "x", "y")
        assert "refused the login of relay@contoso.com: 535" in info.value.message
        assert "password_file" in info.value.hint and "nope" not in info.value.message
        anonymous = SmtpMailer("127.0.0.1", sink.port, "starttls", "exchanged@contoso.com",
                               ca_file=ca_file, timeout=10)
        with pytest.raises(MailError):  # the server wants a login: without one nothing is sent
            await anonymous.send(["ops@contoso.com"], "x", "y")
        assert len(sink.messages) == 1


def test_smtp_login_keys_are_checked(tmp_path: Path) -> None:
    from exchanged.config import ConfigInvalid

    no_password = base(tmp_path, """\
        notifications:
          smtp: {security: starttls, username: relay}
        """)
    with pytest.raises(ConfigInvalid, match=r"notifications\.smtp\.password_file: no SMTP password"):
        load_config(write_config(tmp_path, no_password), credentials_dir="")
    (tmp_path / "pw").write_text("x-secret\n")
    (tmp_path / "pw").chmod(0o600)
    no_user = base(tmp_path, f"""\
        notifications:
          smtp: {{password_file: {tmp_path / 'pw'}}}
        """)
    with pytest.raises(ConfigInvalid, match=r"notifications\.smtp\.username"):
        load_config(write_config(tmp_path, no_user), credentials_dir="")
    plain = base(tmp_path, f"""\
        notifications:
          smtp: {{username: relay, password_file: {tmp_path / 'pw'}}}
        """)
    cfg = load_config(write_config(tmp_path, plain), credentials_dir="")
    assert any("unencrypted" in w for w in cfg.warnings)


async def test_a_mailbox_that_leaves_the_config_leaves_the_shared_cause(
    sink: SmtpSink, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = make(sink.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        for box in ("a@contoso.com", "b@contoso.com"):
            notifier.error("cause:exchange_unreachable", DOWN, box, shared=True)
        notifier.error("user:b@contoso.com:impersonation_denied", LOGIN, "b@contoso.com")
        await notifier.flush()
        notifier.forget_mailbox("b@contoso.com")  # removed by a reload
        assert set(notifier.open_errors()) == {"cause:exchange_unreachable"}
        assert notifier.resolved("cause:exchange_unreachable", "a@contoso.com") is True  # the last one
        await notifier.flush()
        nursery.cancel_scope.cancel()
    subjects = sorted(str(m["Subject"]).split("] ")[1] for m in sink.messages)
    assert [s.split(" ")[0] for s in subjects] == ["ERROR", "ERROR", "RESOLVED"]
    assert subjects[-1].startswith("RESOLVED (1 mailbox): ")
