"""Can the service read its files? ``exchanged check-config`` asks it as the service user.

Root can read everything, so a check-config run by root says nothing about what the daemon, which
runs as the system user ``exchanged`` inside the unit's sandbox, can read. Run as root, this opens
every file the daemon reads itself (the config, ``password_file``, CA bundles, certificate and
secret files) in a child process running as ``exchanged`` with its groups, so that modes, owners,
ACLs and parent directories count exactly as they will for the service. It also names the paths the
unit hides from the daemon (``ProtectHome=yes``: ``/home``, ``/root``, ``/run/user``;
``PrivateTmp=yes``: ``/tmp``, ``/var/tmp``). Files handed over by systemd credentials
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

HIDDEN = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes",
          "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}

_PROBE = """
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
        out[path] = None
    except OSError as exc:
        out[path] = exc.strerror or str(exc)
print(json.dumps(out))
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
        result: dict[str, str | None] = {}
        for path in paths:
            try:
                open(path, "rb").close()
                result[path] = None
            except OSError as exc:
                result[path] = exc.strerror or str(exc)
        return result
    groups = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem]
    # Debian's interpreter (the package's venv links to it): one the user can surely execute
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    done = subprocess.run(
        [python, "-I", "-c", _PROBE, *paths], user=user.pw_uid, group=user.pw_gid,
        extra_groups=groups, env={}, cwd="/", capture_output=True, text=True, timeout=30, check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {path: f"could not check as {user.pw_name}: {reason}" for path in paths}
    answer: dict[str, str | None] = json.loads(done.stdout)
    return answer


def check_access(cfg: Any, config_path: str, service_user: str = SERVICE_USER,
                 hidden: dict[str, str] = HIDDEN) -> AccessReport:
    """What the service user can read of the files ``cfg`` names (see the module docstring).

    The unit's hidden paths (``hidden``) count only when checking as the service user: a daemon
    run by hand (the demo, a developer) has no sandbox."""
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
    results = _probe_as(target, [path for _key, path, _kind in files])
    for key, path, kind in files:
        directive = _hidden_by(path, hidden) if report.as_service_user else None
        if directive is not None and kind != "config":
            report.problems.append({"key": key, "path": path, "message": (
                f"the service cannot see {path}: the unit hides it ({directive}); "
                f"move the file, e.g. to /etc/exchanged/")})
            continue
        error = results.get(path)
        if error is not None:
            report.problems.append({"key": key, "path": path, "message": (
                f"{user.pw_name} cannot read {path} ({error}); {_fix(key, path, kind, user.pw_name)}")})
    return report
