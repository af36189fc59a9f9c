"""Start the app safely: loopback by default, an access secret required for anything else.

    python -m wildid.serve [--address ADDR] [--port PORT] [--dry-run]     (what `make run` runs)

The address comes from ``--address``, else env ``WILDID_ADDRESS``, else 127.0.0.1.  Serving on
any other address (a LAN, ``0.0.0.0``) needs env ``WILDID_ACCESS_SECRET`` (at least
``MIN_SECRET_LENGTH`` characters): app.py then asks every new browser session for it before
any page runs.  Without it the launcher refuses with one line and exit status 2.  After the
checks it replaces itself with ``streamlit run app.py --server.address ADDR`` (exec), so
signals and the exit status are Streamlit's own.  app.py repeats the address check (defence in
depth, for `streamlit run app.py` started by hand).
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import sys
from pathlib import Path
from typing import Sequence

from wildid.errors import WildidError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADDRESS_ENV = "WILDID_ADDRESS"
SECRET_ENV = "WILDID_ACCESS_SECRET"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501
# 12 random characters (e.g. secrets.token_urlsafe(9)) are ~72 bits: no online guessing gets there.
MIN_SECRET_LENGTH = 12
EXIT_REFUSED = 2


class ServeError(WildidError):
    """The app cannot be served as asked (an open address without an access secret)."""


def access_secret() -> str:
    return os.environ.get(SECRET_ENV, "")


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost.  An empty address means every interface."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def check_serving(address: str | None, secret: str | None) -> None:
    """ServeError unless serving on ``address`` with ``secret`` is safe."""
    if is_loopback(address):
        return
    where = address or "every network interface"
    if not secret:
        raise ServeError(
            f"refusing to serve on {where} without an access secret: set {SECRET_ENV} (e.g. "
            f"`export {SECRET_ENV}=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')`) "
            f"or serve on 127.0.0.1"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        raise ServeError(
            f"{SECRET_ENV} is {len(secret)} characters; serving on {where} needs at least "
            f"{MIN_SECRET_LENGTH} (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(12))')"
        )


def secret_matches(given: str, secret: str) -> bool:
    """Constant-time comparison, so response timing tells nothing about the secret."""
    if not secret:
        return False
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def streamlit_argv(address: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"),
            "--server.address", address, "--server.port", str(port), *extra]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wildid.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None, help=f"listen address (default: env {ADDRESS_ENV}, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WILDID_PORT", DEFAULT_PORT)))
    parser.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")
    args, extra = parser.parse_known_args(argv)
    address = (args.address or os.environ.get(ADDRESS_ENV, "") or DEFAULT_ADDRESS).strip()
    try:
        check_serving(address, access_secret())
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    command = streamlit_argv(address, args.port, extra)
    if args.dry_run:
        print(" ".join(command))
        return 0
    if not is_loopback(address):
        print(f"wildid: serving on {address}:{args.port}; every browser session must enter {SECRET_ENV}",
              file=sys.stderr)
    sys.stdout.flush()
    os.chdir(PROJECT_ROOT)
    os.execv(command[0], command)
    return 1  # execv does not return


if __name__ == "__main__":
    sys.exit(main())
