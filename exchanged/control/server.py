"""The control socket server: a Unix stream socket, one trio task per connection.

Theory of operation
-------------------
Start-up (``_prepare_listener``): create the parent directory if missing; take an exclusive
``flock`` on ``PATH.lock`` so that two daemons can never both decide that the socket is stale;
if ``PATH`` exists it must be a socket (anything else is refused, never removed); if something
answers on it another daemon runs there and we refuse to start; otherwise it is the stale socket
of a crashed run and is unlinked. Then bind, listen, ``chmod 0660`` and ``chgrp control.group``.

Every connection: the peer's credentials are read from the kernel (SO_PEERCRED for pid/uid/gid,
SO_PEERGROUPS for the supplementary groups, /proc/PID/status as fallback) and checked by the
injectable ``peer_check``; a refused peer gets one ``permission_denied`` error line and is logged.
Then requests are read line by line and answered in order. Limits keep one client from hurting
the daemon or the others: at most ``max_connections`` at once (more are refused with
``too_many_connections``), a request line must complete within ``idle_timeout`` (silent and
trickling clients are closed), at most ``max_line`` bytes are buffered, a reply that the client
does not read within ``send_timeout`` closes the connection. Any exception in a connection task is
logged and ends that connection only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import math
import os
import pwd
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import structlog
import trio

from exchanged import errors
from exchanged.control.protocol import (
    MAX_LINE_BYTES,
    R_IDLE_TIMEOUT,
    R_PERMISSION_DENIED,
    R_TOO_MANY_CONNECTIONS,
    SERVER_REFUSED,
    LineFramer,
    LineTooLong,
    encode_message,
    error_response,
)
from exchanged.control.rpc import ControlHandler, handle_line

log = structlog.get_logger("exchanged.control")

SOCKET_MODE = 0o660
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python does not name it
_GID_T = struct.Struct("I")  # gid_t is a 32-bit unsigned int on Linux


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = 128  # beyond this: one too_many_connections line, then close
    # of those, other users (group members) get at most this many each, and together all but
    # ``reserved``: root and the daemon's user always find room (500 idle connections of one
    # group member made root's `exchangectl status` fail)
    per_uid: int = 16
    reserved: int = 16
    warn_every_s: float = 10.0  # refusal warnings: one line per kind this often, with a count
    idle_timeout: float = 60.0  # seconds a connection may take to deliver one complete request line
    send_timeout: float = 30.0  # seconds a client may take to read one reply
    max_line: int = MAX_LINE_BYTES
    recv_chunk: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is on the other end of a connection, as the kernel tells it."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups; empty when they could not be read
    groups_source: str = "none"  # "SO_PEERGROUPS" | "/proc" | "none"
    user: str = field(default="")  # the uid's name, for log lines

    def log_fields(self) -> dict[str, object]:
        return {"peer_pid": self.pid, "peer_uid": self.uid, "peer_gid": self.gid, "peer_user": self.user}


PeerCheck = Callable[[PeerCredentials], bool]


def _peer_uid(sock: socket.socket | trio.socket.SocketType) -> int | None:
    """The peer's uid from SO_PEERCRED alone (no name look-ups); None when it cannot be read."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", raw)[1])


def read_peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """Credentials of the peer of a connected Unix socket (stdlib or trio socket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups, source = _peer_groups(sock, pid)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return PeerCredentials(pid, uid, gid, groups, source, user)


def _peer_groups(sock: socket.socket | trio.socket.SocketType, pid: int) -> tuple[tuple[int, ...], str]:
    # SO_PEERGROUPS is the kernel's snapshot at connect time and needs no /proc access (which
    # systemd's ProtectProc=invisible hides). Python caps getsockopt buffers at 1024 bytes
    # (256 groups); a peer with more groups falls back to /proc.
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        usable = len(raw) - len(raw) % _GID_T.size
        return tuple(g for (g,) in _GID_T.iter_unpack(raw[:usable])), "SO_PEERGROUPS"
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:]), "/proc"
    except (OSError, ValueError):
        pass
    return (), "none"


def make_peer_check(gid: int | None, own_uid: int | None = None) -> PeerCheck:
    """The default policy: root, the daemon's own uid, and members of ``gid``.

    Membership is the peer process's primary gid or its supplementary groups as the kernel
    reports them. Only when those could not be read at all does the group's member list in the
    group database (``grp``) count.
    """
    daemon_uid = os.getuid() if own_uid is None else own_uid

    def check(peer: PeerCredentials) -> bool:
        if peer.uid in (0, daemon_uid):
            return True
        if gid is None:
            return False
        if peer.gid == gid or gid in peer.groups:
            return True
        if peer.groups_source == "none":
            return _listed_in_group(peer.uid, gid)
        return False

    return check


def _listed_in_group(uid: int, gid: int) -> bool:
    try:
        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def resolve_group(group: str | None) -> int | None:
    """``control.group`` -> gid; a missing group is a clear start-up error."""
    if group is None or group == "":
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise errors.ControlError(
            f"control.group {group!r} does not exist on this host, so the control socket cannot be "
            "given to it",
            hint=f"create it (groupadd --system {group}) or set control.group to an existing group",
        ) from None


# --- start-up ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Listener:
    sock: socket.socket
    path: str
    inode: int
    lock_fd: int

    def close(self) -> None:
        """Close the socket; remove the file only if it is still ours (not a successor's)."""
        self.sock.close()
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.lock_fd)


def _control_error(message: str, hint: str) -> errors.ControlError:
    return errors.ControlError(message, hint=hint)


def _make_parent(path: str, gid: int | None) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o750)
            if gid is not None:
                os.chown(parent, -1, gid)  # group members must be able to reach the socket
        except OSError as exc:
            raise _control_error(
                f"cannot create the directory {parent} for the control socket: {exc.strerror}",
                "check control.socket and the permissions of its parent directory",
            ) from None
    check_socket_dir(parent)


def check_socket_dir(parent: str, own_uid: int | None = None) -> None:
    """sshd's StrictModes for the socket's directory and every directory above it: owned by root
    or the daemon's user, and writable by nobody else (a sticky directory such as /tmp may be
    above it, not be it). Otherwise another user could replace the socket (and answer root's
    exchangectl), swap it between bind and chown, or hold its lock file."""
    uid = os.geteuid() if own_uid is None else own_uid
    current = os.path.realpath(parent)
    first = True
    while True:
        try:
            info = os.stat(current)
        except OSError as exc:
            raise _control_error(f"control socket directory {current}: {exc.strerror}",
                                 "check control.socket") from None
        why = None
        if info.st_uid not in (0, uid):
            why = f"it is owned by uid {info.st_uid}, not by root or the daemon's user"
        elif info.st_mode & stat.S_IWOTH and (first or not info.st_mode & stat.S_ISVTX):
            why = "other users may write to it"
        elif first and info.st_mode & stat.S_IWGRP and (info.st_uid, info.st_gid) != (0, 0):
            why = f"its group (gid {info.st_gid}) may write to it"
        if why is not None:
            raise _control_error(
                f"refusing the control socket directory {current}: {why}",
                "use a directory only root or the daemon's user can write (the default /run/exchanged, "
                "made by systemd's RuntimeDirectory=), or fix its owner and mode (chmod go-w)")
        if current == "/":
            return
        current = os.path.dirname(current)
        first = False


def _take_lock(path: str) -> int:
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _control_error(
            f"cannot open the lock file {lock_path}: {exc.strerror}",
            "check control.socket and the permissions of its directory",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _another_running(path) from None
    return fd


def _another_running(path: str) -> errors.ControlError:
    return _control_error(
        f"another exchanged is running on {path}",
        "stop it first (systemctl stop exchanged) or give this one another control.socket",
    )


def _clear_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise _control_error(
            f"{path} exists and is not a socket; refusing to replace it",
            "remove or rename that file, or set control.socket to another path",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale control socket of an earlier run", path=path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # backlog full: somebody is listening
            raise _another_running(path) from None
        raise _control_error(
            f"cannot check the existing socket {path}: {exc.strerror}", "remove it if no exchanged is running"
        ) from None
    finally:
        probe.close()
    raise _another_running(path)


def _prepare_listener(path: str, gid: int | None, backlog: int) -> _Listener:
    _make_parent(path, gid)
    lock_fd = _take_lock(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _clear_stale(path)
        try:
            old_umask = os.umask(0o777 & ~SOCKET_MODE)  # created 0660: no window with a wider mode
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
        except OSError as exc:
            raise _control_error(
                f"cannot listen on {path}: {exc.strerror or exc}",
                "check control.socket (Unix socket paths are limited to 107 bytes)",
            ) from None
        inode = os.lstat(path).st_ino
        listener = _Listener(sock, path, inode, lock_fd)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode) or os.lstat(path).st_ino != inode:
                raise OSError(errno.EEXIST, "the socket was replaced after bind")
            os.chmod(path, SOCKET_MODE)
            if gid is not None:
                os.chown(path, -1, gid, follow_symlinks=False)
            sock.listen(backlog)
        except OSError as exc:
            listener.close()
            raise _control_error(
                f"cannot set up the control socket {path}: {exc.strerror}",
                "the daemon must own the socket and be allowed to give it to control.group",
            ) from None
        return listener
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.close(lock_fd)
        raise


# --- serving -----------------------------------------------------------------------------------
async def serve_control(
    path: str,
    group: str | None,
    handler: ControlHandler,
    *,
    peer_check: PeerCheck | None = None,
    limits: ServerLimits | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control protocol on the Unix socket ``path`` until cancelled.

    Reports ``path`` through ``task_status.started()`` once clients can connect. Start-up problems
    (group missing, another daemon on the socket, a non-socket file in the way, no permission)
    raise ``errors.ControlError`` before ``started()``.
    """
    limits = limits or ServerLimits()
    gid = resolve_group(group)
    check = peer_check or make_peer_check(gid)
    listener = _prepare_listener(path, gid, backlog=max(128, limits.max_connections))
    server = _Server(handler, check, limits)
    try:
        listen_sock = trio.socket.from_stdlib_socket(listener.sock)
        log.info("control socket listening", path=path, group=group, mode=oct(SOCKET_MODE))
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            await server.accept_loop(listen_sock, nursery)
    finally:
        listener.close()


_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}


class _Server:
    def __init__(self, handler: ControlHandler, peer_check: PeerCheck, limits: ServerLimits) -> None:
        self.handler = handler
        self.peer_check = peer_check
        self.limits = limits
        self.active = 0
        self.refusing = 0
        self._ids = count(1)
        self.own_uid = os.getuid()
        self.by_uid: dict[int, int] = {}  # connections of unprivileged peers, per uid
        self._warned: dict[str, tuple[float, int]] = {}  # kind -> (last warning, suppressed since)

    def warn(self, kind: str, event: str, **fields: object) -> None:
        """A refusal warning, at most one per kind per ``warn_every_s`` (a connect loop wrote
        34,068 lines in 15 s); the next one counts what was suppressed."""
        now = trio.current_time()
        last, suppressed = self._warned.get(kind, (-math.inf, 0))
        if now - last < self.limits.warn_every_s:
            self._warned[kind] = (last, suppressed + 1)
            return
        self._warned[kind] = (now, 0)
        log.warning(event, suppressed=suppressed, **fields) if suppressed else log.warning(event, **fields)

    def _unprivileged_room(self, uid: int) -> bool:
        if uid in (0, self.own_uid):
            return True
        others = sum(self.by_uid.values())
        return (self.by_uid.get(uid, 0) < self.limits.per_uid
                and others < self.limits.max_connections - self.limits.reserved)

    async def accept_loop(self, listen_sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await listen_sock.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue  # that one client is gone already; the next accept works
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                # Out of file descriptors or memory: wait for some to free up, keep serving.
                log.warning("control socket cannot accept connections", error=exc.strerror)
                await trio.sleep(0.1)
                continue
            stream = trio.SocketStream(conn)
            conn_id = next(self._ids)
            # The uid straight from the kernel (one syscall, no NSS): a user past its share is
            # refused here, before it holds a slot, so a flood from one group member never fills
            # the slots root and the daemon's user are promised, not even while it is processed.
            uid = _peer_uid(conn)
            if uid is not None and not self._unprivileged_room(uid):
                if self.refusing >= self.limits.max_connections:
                    conn.close()
                    continue
                self.refusing += 1
                nursery.start_soon(self._refuse_uid, stream, conn_id, uid)
                continue
            if self.active >= self.limits.max_connections:
                if self.refusing >= self.limits.max_connections:
                    conn.close()  # a flood: not even a refusal line
                    continue
                self.refusing += 1
                nursery.start_soon(self._refuse_busy, stream, conn_id)
                continue
            self.active += 1
            counted = uid if uid is not None and uid not in (0, self.own_uid) else None
            if counted is not None:
                self.by_uid[counted] = self.by_uid.get(counted, 0) + 1
            nursery.start_soon(self._connection, stream, conn_id, counted)

    async def _refuse_uid(self, stream: trio.SocketStream, conn_id: int, uid: int) -> None:
        try:
            self.warn(f"uid{uid}", "control connection refused: too many connections of one user",
                      conn=conn_id, limit=self.limits.per_uid, peer_uid=uid)
            await _send_final(stream, error_response(
                None, SERVER_REFUSED, f"uid {uid} already has as many control connections as one user "
                "may; close some and try again", R_TOO_MANY_CONNECTIONS))
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _refuse_busy(self, stream: trio.SocketStream, conn_id: int) -> None:
        try:
            self.warn("busy", "control connection refused: too many connections", conn=conn_id,
                      limit=self.limits.max_connections)
            message = (
                f"the daemon already serves {self.limits.max_connections} control connections; "
                "try again in a minute"
            )
            await _send_final(stream, error_response(None, SERVER_REFUSED, message, R_TOO_MANY_CONNECTIONS))
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream, conn_id: int, counted: int | None) -> None:
        try:
            # In a worker thread: user and group names come from NSS, which may be LDAP and slow;
            # the event loop (and every other client) must not wait for it.
            peer = await trio.to_thread.run_sync(self._peer, stream)
            if peer is None or not await trio.to_thread.run_sync(self.peer_check, peer):
                await self._refuse_peer(stream, conn_id, peer)
                return
            await serve_stream(
                stream, self.handler, self.limits, log_fields={"conn": conn_id, **peer.log_fields()}
            )
        except Exception:
            # A bug in the server itself: it must end this connection only, never the daemon.
            log.exception("control connection failed", conn=conn_id)
        finally:
            self.active -= 1
            if counted is not None:
                self.by_uid[counted] -= 1
                if not self.by_uid[counted]:
                    del self.by_uid[counted]
            await trio.aclose_forcefully(stream)

    @staticmethod
    def _peer(stream: trio.SocketStream) -> PeerCredentials | None:
        try:
            return read_peer_credentials(stream.socket)
        except OSError:
            return None

    async def _refuse_peer(
        self, stream: trio.SocketStream, conn_id: int, peer: PeerCredentials | None
    ) -> None:
        fields = peer.log_fields() if peer else {}
        self.warn(f"peer{peer.uid if peer else '?'}", "control connection refused: peer not allowed",
                  conn=conn_id, **fields)
        who = f"uid {peer.uid} ({peer.user})" if peer else "a peer whose credentials cannot be read"
        message = (
            f"permission denied: {who} may not use the exchanged control socket; "
            "it needs root, the daemon's user, or membership in control.group"
        )
        await _send_final(stream, error_response(None, SERVER_REFUSED, message, R_PERMISSION_DENIED))


async def serve_stream(
    stream: trio.abc.Stream,
    handler: ControlHandler,
    limits: ServerLimits | None = None,
    *,
    log_fields: dict[str, object] | None = None,
) -> None:
    """Answer the requests of one connection, in order, until EOF or a limit ends it.

    Works on any trio stream (the tests drive it over ``memory_stream_pair()``); does not close
    the stream. A client that goes away, sends an over-long line, stays silent for
    ``idle_timeout`` or does not read its replies ends only this connection.
    """
    limits = limits or ServerLimits()
    fields = log_fields or {}
    try:
        await _answer_requests(stream, handler, limits, fields)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("control client went away", **fields)
    except LineTooLong as exc:
        log.warning("control request line too long, connection closed", limit=exc.data.get("limit"), **fields)
        await _send_final(stream, exc.response(None))


async def _answer_requests(
    stream: trio.abc.Stream, handler: ControlHandler, limits: ServerLimits, fields: dict[str, object]
) -> None:
    framer = LineFramer(limits.max_line)
    lines: deque[bytes] = deque()
    while True:
        if not lines:
            # The idle timeout covers the whole wait for one complete line, so a client that
            # trickles a byte now and then is closed too, not only a silent one.
            with trio.move_on_after(limits.idle_timeout) as idle:
                while not lines:
                    data = await stream.receive_some(limits.recv_chunk)
                    if not data:
                        if framer.pending:
                            log.info("control client closed mid-request", pending=framer.pending, **fields)
                        return
                    lines.extend(framer.feed(data))
            if idle.cancelled_caught:
                log.info("control connection idle, closed", timeout=limits.idle_timeout, **fields)
                message = f"no complete request within {limits.idle_timeout:g} s; connection closed"
                await _send_final(stream, error_response(None, SERVER_REFUSED, message, R_IDLE_TIMEOUT))
                return
        line = lines.popleft()
        if not line.strip():
            continue  # blank lines are harmless keep-alives
        answer = await handle_line(handler, line)
        if answer is None:
            continue
        with trio.move_on_after(limits.send_timeout) as sending:
            await stream.send_all(answer)
        if sending.cancelled_caught:
            log.info("control client does not read its reply, closed", **fields)
            return


async def _send_final(stream: trio.abc.Stream, message: dict[str, object]) -> None:
    """Best effort: one last line to a client we are about to close."""
    with trio.move_on_after(2.0):
        try:
            await stream.send_all(encode_message(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
