"""Framing, decoding, parameter validation and time parsing: pure functions, no sockets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

import pytest

from exchanged.control import protocol as p


class TestLineFramer:
    def test_splits_lines_and_keeps_the_partial_rest(self) -> None:
        framer = p.LineFramer(limit=100)
        assert framer.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
        assert framer.pending == 4
        assert framer.feed(b":2}\n\n") == [b'{"b":2}', b""]
        assert framer.pending == 0

    def test_line_of_exactly_the_limit_is_accepted(self) -> None:
        framer = p.LineFramer(limit=10)
        assert framer.feed(b"x" * 10 + b"\n") == [b"x" * 10]

    def test_partial_line_beyond_the_limit_is_refused(self) -> None:
        framer = p.LineFramer(limit=10)
        framer.feed(b"x" * 10)
        with pytest.raises(p.LineTooLong) as info:
            framer.feed(b"y")
        assert info.value.reason == "line_too_long"
        assert info.value.code == p.INVALID_REQUEST

    def test_complete_line_beyond_the_limit_is_refused(self) -> None:
        with pytest.raises(p.LineTooLong):
            p.LineFramer(limit=10).feed(b"x" * 11 + b"\nshort\n")

    def test_byte_by_byte_feeding_gives_the_same_lines(self) -> None:
        framer = p.LineFramer(limit=100)
        out: list[bytes] = []
        for byte in b"one\ntwo\nthree\n":
            out += framer.feed(bytes([byte]))
        assert out == [b"one", b"two", b"three"]

    def test_default_limit_is_one_mebibyte(self) -> None:
        assert p.LineFramer().limit == 1024 * 1024 == p.MAX_LINE_BYTES


class TestDecode:
    def test_valid_object(self) -> None:
        assert p.decode_line('{"x": "ä"}'.encode()) == {"x": "ä"}

    def test_invalid_utf8_is_a_parse_error_naming_the_byte(self) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.decode_line(b'{"x": "\xff"}')
        assert (info.value.code, info.value.reason) == (p.PARSE_ERROR, "parse_error")
        assert "UTF-8" in info.value.message and "byte 7" in info.value.message

    @pytest.mark.parametrize("line", [b"garbage", b'{"a":', b"{'single': 1}", b"NaN", b'{"x": Infinity}'])
    def test_garbage_is_a_parse_error(self, line: bytes) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.decode_line(line)
        assert info.value.reason == "parse_error"

    def test_nesting_just_within_the_limit_is_accepted(self) -> None:
        line = ("[" * p.MAX_DEPTH + "]" * p.MAX_DEPTH).encode()
        assert p.decode_line(line) is not None

    @pytest.mark.parametrize("depth", [p.MAX_DEPTH + 1, 200_000])
    def test_deep_nesting_is_refused_cleanly(self, depth: int) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.decode_line(("[" * depth + "]" * depth).encode())
        assert (info.value.code, info.value.reason) == (p.INVALID_REQUEST, "nesting_too_deep")

    def test_deep_objects_are_refused_too(self) -> None:
        line = '{"a":' * 40 + "1" + "}" * 40
        with pytest.raises(p.ProtocolError) as info:
            p.decode_line(line.encode())
        assert info.value.reason == "nesting_too_deep"


class Colour(StrEnum):
    RED = "red"


def test_encode_message_is_one_compact_utf8_line_and_converts_datetimes_and_enums() -> None:
    when = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
    line = p.encode_message({"at": when, "c": Colour.RED, "s": frozenset({"b", "a"}), "t": "ö"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"at": "2026-11-29T04:00:00+00:00", "c": "red", "s": ["a", "b"], "t": "ö"}
    assert "ö".encode() in line


def test_encode_message_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        p.encode_message({"x": object()})
    with pytest.raises(ValueError):
        p.encode_message({"x": float("nan")})


class TestValidateParams:
    def test_defaults_fill_in_omitted_params(self) -> None:
        assert p.validate_params("sync", None) == {
            "mailboxes": None,
            "full": False,
            "wait": False,
            "allow_deletes": False,
        }
        assert p.validate_params("status", []) == {}

    def test_unknown_param_is_refused_by_name(self) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.validate_params("sync", {"ful": True})
        assert info.value.reason == "invalid_params" and info.value.data["param"] == "ful"
        assert "'ful'" in info.value.message and "full" in info.value.message

    def test_methods_without_params_refuse_any(self) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.validate_params("status", {"verbose": True})
        assert info.value.data["param"] == "verbose"

    @pytest.mark.parametrize(
        ("method", "params", "param"),
        [
            ("sync", {"full": "yes"}, "full"),
            ("sync", {"full": 1}, "full"),
            ("sync", {"mailboxes": "a@b"}, "mailboxes"),
            ("sync", {"mailboxes": []}, "mailboxes"),
            ("sync", {"mailboxes": ["a@b", 3]}, "mailboxes"),
            ("sync", {"mailboxes": ["  "]}, "mailboxes"),
            ("pause", {"mailboxes": ["a\nb"]}, "mailboxes"),
            ("plan", {}, "mailbox"),
            ("plan", {"mailbox": None}, "mailbox"),
            ("plan", {"mailbox": 7}, "mailbox"),
            ("history", {"since": "yesterday"}, "since"),
            ("history", {"since": 1700000000}, "since"),
            ("history", {"limit": 0}, "limit"),
            ("history", {"limit": "5"}, "limit"),
            ("history", {"limit": True}, "limit"),
            ("history", {"limit": 100_001}, "limit"),
            ("reload", {"wait": None}, "wait"),
        ],
    )
    def test_wrong_types_are_refused_naming_the_param(self, method: str, params: dict, param: str) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.validate_params(method, params)
        assert info.value.reason == "invalid_params"
        assert info.value.data["param"] == param
        assert param in info.value.message

    def test_params_must_be_an_object(self) -> None:
        with pytest.raises(p.ProtocolError) as info:
            p.validate_params("plan", ["a@b"])
        assert info.value.reason == "invalid_params"

    def test_mailboxes_are_trimmed_and_deduplicated(self) -> None:
        out = p.validate_params("sync", {"mailboxes": [" a@b ", "a@b", "c@d"]})
        assert out["mailboxes"] == ["a@b", "c@d"]

    def test_since_is_normalised_to_utc(self) -> None:
        assert p.validate_params("history", {"since": "2026-11-29T05:00:00+01:00"})["since"] == (
            "2026-11-29T04:00:00+00:00"
        )
        assert (
            p.validate_params("history", {"since": "2026-11-29T04:00"})["since"]
            == "2026-11-29T04:00:00+00:00"
        )

    def test_since_outside_the_utc_years_is_the_earliest_or_latest_time(self) -> None:
        """Issue #14: ``0001-01-01T00:00:00+05:00`` dropped the connection with an OverflowError."""
        assert p.validate_params("history", {"since": "0001-01-01T00:00:00+05:00"})["since"] == (
            "0001-01-01T00:00:00+00:00")
        assert p.validate_params("history", {"since": "9999-12-31T23:00:00-05:00"})["since"].startswith(
            "9999-12-31T23:59:59")

    def test_every_method_has_a_spec(self) -> None:
        assert set(p.METHODS) == {
            "version",
            "status",
            "users",
            "resources",
            "sync",
            "plan",
            "history",
            "reload",
            "pause",
            "resume",
            "metrics",
        }


class TestParseSince:
    NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30m", "2026-11-29T11:30:00+00:00"),
            ("2h", "2026-11-29T10:00:00+00:00"),
            ("3d", "2026-11-26T12:00:00+00:00"),
            ("1w", "2026-11-22T12:00:00+00:00"),
            ("2026-11-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00"),
        ],
    )
    def test_relative_and_absolute(self, text: str, expected: str) -> None:
        assert p.parse_since(text, self.NOW) == expected

    def test_naive_datetime_means_local_time(self) -> None:
        local = datetime(2026, 11, 1, 8, 0).astimezone()
        assert p.parse_since("2026-11-01T08:00", self.NOW) == local.astimezone(UTC).isoformat()

    @pytest.mark.parametrize("text", ["999999w", "99999999999999d"])
    def test_further_back_than_year_1_is_everything(self, text: str) -> None:
        """Issue #14: ``exchangectl history --since 999999w`` printed a traceback."""
        assert p.parse_since(text, self.NOW) == "0001-01-01T00:00:00+00:00"

    @pytest.mark.parametrize("text", ["", "soon", "2x", "-2h"])
    def test_garbage_names_the_accepted_forms(self, text: str) -> None:
        with pytest.raises(ValueError, match="30m, 2h, 3d"):
            p.parse_since(text, self.NOW)


@pytest.mark.parametrize(("value", "major"), [(1, 1), ("2.3", 2), ("x", None), (True, None), (None, None)])
def test_protocol_major(value: object, major: int | None) -> None:
    assert p.protocol_major(value) == major


def test_client_module_does_not_import_trio() -> None:
    # exchangectl must start fast: the protocol module (its only import of ours) stays stdlib-only.
    import subprocess
    import sys

    code = "import sys, exchanged.ctl; print('trio' in sys.modules, 'structlog' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# (reason, the sync account logs in for every user) -> (reachable, login) afterwards, from a server
# known reachable with the login ok
NOTE_FAILURE = [
    ("exchange_unreachable", True, (False, "not checked")),
    ("tls_untrusted", False, (False, "not checked")),
    ("auth_failed", True, (True, "refused")),
    ("auth_failed", False, (True, "ok")),  # one user's own login refused says nothing of the others
    ("psa_unreachable", True, (True, "ok")),  # not the server's doing
    ("mailbox_not_found", True, (True, "ok")),
]


@pytest.mark.parametrize(("reason", "sync_login", "after"), NOTE_FAILURE)
def test_what_a_failure_says_of_the_exchange_server(reason: str, sync_login: bool,
                                                    after: tuple[bool, str]) -> None:
    status = p.ExchangeStatus("mail.example.test", "Exchange2016", reachable=True, login="ok")
    status.note_failure(reason, f"bob@example.test: {reason}", sync_account_login=sync_login)
    assert (status.reachable, status.login) == after
    assert status.last_error == (None if reason in ("psa_unreachable", "mailbox_not_found")
                                 else f"bob@example.test: {reason}")
