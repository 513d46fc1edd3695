"""A throw-away Debian 12 machine booted with a real systemd as PID 1, for the system tests.

The host's own ``/`` (read-only, as the lower dir) under a tmpfs upper dir, as an overlay inside a
private mount namespace (``unshare -m``), booted by ``systemd-nspawn -b`` with its own network
namespace (only loopback), a fresh machine id and a tmpfs on ``/run``. Nothing it writes reaches
the host: everything lives in the tmpfs and goes when the namespace does. Commands run inside with
``nsenter -t <PID 1> -a``. Debian package ``systemd-container`` provides systemd-nspawn.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

BOOT_TIMEOUT_S = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_BOOT = r"""
set -eu
base=$1; shift
mkdir -p "$base/root" "$base/upper"
mount -t tmpfs -o mode=0755 tmpfs "$base/upper"
mkdir -p "$base/upper/up" "$base/upper/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper/up,workdir=$base/upper/work" "$base/root"
systemd-id128 new > "$base/root/etc/machine-id"
mount -t tmpfs -o mode=0755 tmpfs /run
exec systemd-nspawn -D "$base/root" --register=no --keep-unit --link-journal=no --private-network \
    --console=pipe "$@" -b
"""


class ContainerError(RuntimeError):
    pass


class Container:
    """``with Container(base, binds=[...]) as c: c.run("systemctl", "status")``."""

    def __init__(self, base: Path, binds: Sequence[Path] = ()) -> None:
        self.base = base
        self.binds = [Path(b) for b in binds]
        self.console = base / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    # --- life ------------------------------------------------------------------------------------
    def start(self) -> Container:
        self.base.mkdir(parents=True, exist_ok=True)
        binds = [f"--bind-ro={b}" for b in dict.fromkeys(self.binds)]
        with self.console.open("wb") as console:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private",
                 "sh", "-c", _BOOT, "boot", str(self.base), *binds],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not self.pid1:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ContainerError(f"no PID 1 in the container after {BOOT_TIMEOUT_S:.0f} s:\n"
                                     f"{self.tail()}")
            self.pid1 = self._find_init(self.proc.pid)
            time.sleep(0.05)
        while True:  # systemd's bus comes up a moment after PID 1 exists
            state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT_S)
            if state.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state.stdout.strip() not in ("running", "degraded"):
            raise ContainerError(f"the container did not boot: {state.stdout.strip()} "
                                 f"{state.stderr.strip()}\n{self.tail()}")
        return self

    def _find_init(self, pid: int) -> int:
        """The container's systemd: the first descendant of nspawn named systemd."""
        todo = [pid]
        while todo:
            current = todo.pop()
            try:
                comm = Path(f"/proc/{current}/comm").read_text().strip()
                children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            except OSError:
                continue
            if current != pid and comm == "systemd":
                return current
            todo += [int(c) for c in children]
        return 0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> Container:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a container that did not boot must not outlive the test
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- commands --------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root, with a clean environment; ``check`` raises with its output."""
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", **(env or {})}
        command = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i",
                   *(f"{k}={v}" for k, v in environment.items()), *argv]
        done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise ContainerError(
                f"{shlex.join(argv)} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kwargs)  # type: ignore[arg-type]

    def write(self, path: str, text: str, mode: str = "0644", group: str = "root") -> None:
        self.run("install", "-D", "-m", mode, "-g", group, "/dev/stdin", path, input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate: object, timeout: float = 60, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise ContainerError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)
