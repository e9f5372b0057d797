"""TCP ports on this machine for the embedded servers (broker, PostgreSQL) and the processes they serve."""

from __future__ import annotations

import socket

from scorer.errors import ScorerError


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int, hint: str) -> None:
    """ScorerError (reason port_taken) naming the port and `hint` when something listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ScorerError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}): {hint}", reason="port_taken"
            ) from exc
