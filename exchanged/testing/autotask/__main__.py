"""``python -m exchanged.testing.autotask --port PORT --state-dir DIR --api-user USER:SECRET:CODE``.

Serves the zone lookup and one zone at ``https://localhost:PORT/ATServicesRest/`` and prints one
JSON line ``{"url": ..., "ca_file": ...}`` once it accepts connections; runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .server import AutotaskServer


def _api_user(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError("--api-user must be USER:SECRET:INTEGRATION_CODE")
    return parts[0], parts[1], parts[2]


def _seed(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--seed {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError(f"--seed {path}: must be a JSON object of entity lists")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m exchanged.testing.autotask",
        description="Autotask REST API test server (HTTPS, throw-away CA)",
    )
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--api-user", type=_api_user, required=True, metavar="USER:SECRET:INTEGRATION_CODE")
    p.add_argument("--seed", type=_seed, default=None, metavar="FILE.json")
    p.add_argument("--threshold", type=int, default=10_000, metavar="PER_HOUR")
    args = p.parse_args(argv)
    try:
        server = AutotaskServer(
            api_user=args.api_user,
            state_dir=args.state_dir,
            seed=args.seed,
            threshold=args.threshold,
            host="localhost",
            port=args.port,
        )
        server.start()
    except (OSError, ValueError) as exc:
        print(f"autotask test server: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"url": server.url, "ca_file": str(server.ca_file)}), flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
