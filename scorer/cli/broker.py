"""`scorer broker`: the embedded tansu broker in the foreground, for someone with no Kafka of their own.

The same broker `scorer demo` and the tests start (demo/broker.py), on a port the user chooses, until
Ctrl-C or SIGTERM. Its storage is in memory: the topics and records go with it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from scorer.cli.args import HelpFormatter
from scorer.errors import ScorerError
from scorer.runtime.ports import check_port_free

DEFAULT_PORT = 9092  # the commands' default --brokers is localhost:9092: they find it without a flag
POLL_S = 0.5  # how often the foreground loop checks that the broker still runs


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from exc
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {port}")
    return port


def add_broker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        formatter_class=HelpFormatter,
        help="run the embedded Kafka-compatible broker (tansu, in memory) in the foreground until Ctrl-C",
    )
    p.add_argument(
        "--port",
        type=port_arg,
        default=DEFAULT_PORT,
        help="TCP port on 127.0.0.1 (0: any free port, printed)",
    )
    p.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT/SIGTERM, then stop it (exit 0). ScorerError (one line, exit 1) when
    the `broker` extra is missing, the port is taken or the broker stops by itself."""
    from scorer.demo.broker import EmbeddedBroker, tansu_path
    from scorer.runtime.process import install_signal_handlers

    tansu_path()  # the `broker` extra, before anything is started
    if args.port:
        check_port_free(args.port, hint="another broker? Choose one with --port")
    stop = threading.Event()
    install_signal_handlers(stop)  # before the start: a SIGTERM then still stops tansu (in its own session)
    log = Path(tempfile.mkdtemp(prefix="scorer-broker-")) / "tansu.log"
    with EmbeddedBroker(args.port or None, log_path=log) as broker:
        print(f"broker on {broker.bootstrap}: point the commands at it with --brokers {broker.bootstrap}")
        print(f"in memory (its topics go when it stops); tansu pid {broker.pid}, log {log}; Ctrl-C stops it")
        sys.stdout.flush()
        while not stop.wait(POLL_S):
            if broker.exit_code is not None:
                raise ScorerError(f"the broker stopped by itself (exit code {broker.exit_code}; log {log})")
    print("broker stopped")
    return 0
