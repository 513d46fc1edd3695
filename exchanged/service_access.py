"""Can the service read its files? ``exchanged check-config`` asks it as the service user.

Root can read everything, so a check-config run by root says nothing about what the daemon, which
runs as the system user ``exchanged`` inside the unit's sandbox, can read. Run as root, this opens
every file the daemon reads itself (the config, ``password_file``, CA bundles, certificate and
secret files) in a child process running as ``exchanged`` with its groups, so that modes, owners,
ACLs and parent directories count exactly as they will for the service. It also names the paths the
unit hides from the daemon (``ProtectHome=yes``: ``/home``, ``/root``, ``/run/user``;
``PrivateTmp=yes``: ``/tmp``, ``/var/tmp``), and checks the directories the daemon writes in (the
SQLite databases, the metrics text file): the user must be able to create files there, and the
unit (``ProtectSystem=strict``) lets it write only in ``/var/lib/exchanged``, ``/run/exchanged`` and
what a drop-in adds with ``ReadWritePaths=``. Files handed over by systemd credentials
(``LoadCredential=``) are read by systemd as root and are not checked as the user.

Run by anyone else, it checks as that user and says so.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_USER = "exchanged"  # packaging/systemd/exchanged.sysusers and the unit's User=

# where the unit lets the daemon write (StateDirectory=, RuntimeDirectory=; systemd creates and
# chowns them at start); anything else needs a ReadWritePaths= drop-in
WRITABLE = ("/var/lib/exchanged", "/run/exchanged")

HIDDEN = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes",
          "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}

# "r:PATH": can the file be opened for reading; "w:DIR": can files be created in the directory.
# Source text, so the same code runs in-process and in the child that runs as the service user.
_PROBE = """
import json, os, sys

def probe(args):
    out = {}
    for arg in args:
        mode, path = arg[0], arg[2:]
        try:
            if mode == "w":
                out[arg] = None if os.access(path, os.W_OK | os.X_OK) else "no write permission"
            else:
                open(path, "rb").close()
                out[arg] = None
        except OSError as exc:
            out[arg] = exc.strerror or str(exc)
    return out
"""


@dataclass
class AccessReport:
    user: str
    uid: int
    as_service_user: bool  # False: the service user does not exist here, or not run by root
    note: str  # one line for the operator: who was checked, and why that one
    problems: list[dict[str, str]] = field(default_factory=list)  # {key, path, message}

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "uid": self.uid, "as_service_user": self.as_service_user,
                "note": self.note, "problems": list(self.problems)}


def files_the_daemon_reads(cfg: Any, config_path: str) -> list[tuple[str, str, str]]:
    """(config key, absolute path, kind) of every file the daemon opens itself; kind is
    ``secret`` (must stay private to the service user) or ``public`` (a CA may be world-readable)."""
    base = Path(config_path).resolve().parent

    def absolute(name: str) -> str:
        path = Path(name)
        return str(path if path.is_absolute() else base / path)

    found: list[tuple[str, str, str]] = [("the config file", str(Path(config_path).resolve()), "config")]
    candidates: list[tuple[str, str | None, str]] = [
        ("server.ca_bundle", cfg.server.ca_bundle, "public"),
        ("credentials.password_file", cfg.credentials.password_file, "secret"),
        ("credentials.client_secret_file", getattr(cfg.credentials, "client_secret_file", None), "secret"),
        ("credentials.certificate_file", getattr(cfg.credentials, "certificate_file", None), "secret"),
        ("notifications.smtp.ca_file", cfg.notifications.smtp.ca_file, "public"),
    ]
    for n, user in enumerate(cfg.users):
        candidates.append((f"users[{n}].password_file", user.password_file, "secret"))
    for key in ("secret_file", "integration_code_file", "ca_bundle"):
        value = getattr(cfg.psa, key, None)
        candidates.append((f"psa.{key}", value, "public" if key == "ca_bundle" else "secret"))
    found += [(key, absolute(value), kind) for key, value, kind in candidates if value]
    return found


def dirs_the_daemon_writes(cfg: Any) -> list[tuple[str, str]]:
    """(config key, directory) of every place the daemon creates or rewrites files in: the SQLite
    state and PSA databases (with their -wal/-shm files) and the metrics text file."""
    found: list[tuple[str, str]] = []
    for key, url in (("state.url", cfg.state.url), ("psa.url", getattr(cfg.psa, "url", None))):
        if isinstance(url, str) and url.lower().startswith("sqlite:///") and ":memory:" not in url:
            found.append((key, str(Path(url[len("sqlite:///"):]).resolve().parent)))
    textfile = getattr(getattr(cfg, "metrics", None), "textfile", None)
    if textfile:
        found.append(("metrics.textfile", str(Path(textfile).parent)))
    return found


def unit_writable_paths() -> tuple[str, ...]:
    """The unit's own writable directories plus the ReadWritePaths= of its drop-ins, as systemd sees
    them (nothing more when systemd does not answer)."""
    try:
        done = subprocess.run(
            ["systemctl", "show", "--property=ReadWritePaths", "--value", f"{SERVICE_USER}.service"],
            capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return WRITABLE
    extra = tuple(p.lstrip("-+") for p in done.stdout.split()) if done.returncode == 0 else ()
    return WRITABLE + extra


def _under(path: str, roots: tuple[str, ...] | dict[str, str]) -> str | None:
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return root
    return None


def _hidden_by(path: str, hidden: dict[str, str]) -> str | None:
    for prefix, directive in hidden.items():
        if path == prefix or path.startswith(prefix + "/"):
            return directive
    return None


def _fix(key: str, path: str, kind: str, user: str) -> str:
    if kind == "config":
        return f"run: chgrp {user} {path} && chmod 0640 {path}"
    if kind == "public":
        return f"run: chmod 0644 {path}"
    hint = f"run: chown {user} {path} (it stays chmod 600)"
    if key == "credentials.password_file":
        hint += (", or remove password_file and let systemd hand the file over "
                 f"(LoadCredential=sync-password:{path}; it may then stay root's)")
    return hint


def _probe_as(user: pwd.struct_passwd | None, paths: list[str]) -> dict[str, str | None]:
    if user is None:  # as ourselves
        namespace: dict[str, Any] = {}
        exec(_PROBE, namespace)  # our own constant source text, see _PROBE
        result: dict[str, str | None] = namespace["probe"](paths)
        return result
    groups = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem]
    # Debian's interpreter (the package's venv links to it): one the user can surely execute
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    done = subprocess.run(
        [python, "-I", "-c", _PROBE + "print(json.dumps(probe(sys.argv[1:])))", *paths],
        user=user.pw_uid, group=user.pw_gid, extra_groups=groups, env={}, cwd="/",
        capture_output=True, text=True, timeout=30, check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {path: f"could not check as {user.pw_name}: {reason}" for path in paths}
    answer: dict[str, str | None] = json.loads(done.stdout)
    return answer


def check_access(cfg: Any, config_path: str, service_user: str = SERVICE_USER,
                 hidden: dict[str, str] = HIDDEN, writable: tuple[str, ...] | None = None) -> AccessReport:
    """What the service user can read of the files ``cfg`` names (see the module docstring).

    The unit's hidden paths (``hidden``) and its writable directories (``writable``; default: the
    unit's own and its drop-ins' ReadWritePaths=) count only when checking as the service user: a
    daemon run by hand (the demo, a developer) has no sandbox."""
    me = pwd.getpwuid(os.geteuid())
    target: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            target = pwd.getpwnam(service_user)
        except KeyError:
            note = (f"checked as {me.pw_name}: the service user {service_user} does not exist here "
                    f"(the Debian package creates it)")
        else:
            note = f"checked as the service user {service_user} (uid {target.pw_uid})"
    else:
        note = (f"checked as {me.pw_name} (uid {me.pw_uid}); run as root to check as the service user "
                f"{service_user}")
    user = target or me
    files = files_the_daemon_reads(cfg, config_path)
    report = AccessReport(user=user.pw_name, uid=user.pw_uid, as_service_user=target is not None, note=note)
    writes = dirs_the_daemon_writes(cfg)
    if report.as_service_user and writable is None:
        writable = unit_writable_paths()
    allowed = writable or ()
    # systemd creates the unit's own directories and hands them to the user at start: no probe there
    probed = [d for _key, d in writes if Path(d).is_dir() and not _under(d, WRITABLE)]
    results = _probe_as(target, [f"r:{path}" for _key, path, _kind in files] + [f"w:{d}" for d in probed])
    for key, directory in writes:
        if report.as_service_user and _under(directory, allowed) is None:
            report.problems.append({"key": key, "path": directory, "message": (
                f"the service may not write to {directory}: the unit allows only "
                f"{', '.join(allowed)} (ProtectSystem=strict); add a drop-in with "
                f"`systemctl edit exchanged`: [Service] ReadWritePaths={directory}")})
        elif results.get(f"w:{directory}") is not None:
            report.problems.append({"key": key, "path": directory, "message": (
                f"{user.pw_name} cannot create files in {directory} ({results[f'w:{directory}']}); "
                f"run: chown {user.pw_name} {directory}")})
    for key, path, kind in files:
        directive = _hidden_by(path, hidden) if report.as_service_user else None
        if directive is not None and kind != "config":
            report.problems.append({"key": key, "path": path, "message": (
                f"the service cannot see {path}: the unit hides it ({directive}); "
                f"move the file, e.g. to /etc/exchanged/")})
            continue
        error = results.get(f"r:{path}")
        if error is not None:
            report.problems.append({"key": key, "path": path, "message": (
                f"{user.pw_name} cannot read {path} ({error}); {_fix(key, path, kind, user.pw_name)}")})
    return report
