"""`scorer serve` with TLS, mutual TLS and API keys on the real broker: a client without a certificate the
client CA signed is refused at the handshake; no key, a wrong key and a revoked key are 401; a key is
rotated while requests flow, with none refused. No scorer runs: every accepted request gets the fallback
at a short deadline, which is all the access rules need."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from scorer.config import Settings
from scorer.serve.access import key_line, new_key
from tests.integration.conftest import Proc
from tests.integration.sasl_proxy import make_certificates
from tests.integration.test_serve import Serve, tx


def client_certificate(directory: Path, ca: Path, ca_key: Path, name: str) -> tuple[Path, Path]:
    """(cert, key) of a client certificate `ca` signed."""
    key, csr, cert = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem"))
    steps = [
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return cert, key


def write_keys(path: Path, *lines: str) -> None:
    """Replace the key file at once, as a Kubernetes Secret volume does (a reader sees old or new)."""
    temp = path.with_suffix(".new")
    temp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(temp, path)


class Client:
    """HTTPS to serve, trusting the test CA, with a client certificate or without."""

    def __init__(self, port: int, ca: Path, cert: tuple[Path, Path] | None) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            self.context.load_cert_chain(str(cert[0]), str(cert[1]))

    def call(self, path: str, body: object | None = None, key: str | None = None) -> tuple[int, bytes]:
        headers = {"X-Scorer-Deadline-Ms": "50"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20, context=self.context) as r:  # noqa: S310
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()


def scoring_requests(proc: Proc) -> float:
    """Scoring requests that reached the app, whatever their outcome (from the plain metrics port)."""
    text = proc.metrics()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("scorer_serve_requests_total{")
    )


def test_mutual_tls_and_api_keys_with_a_rotation_under_load(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    processor = client_certificate(tmp_path, ca, tmp_path / "ca.key", "processor")
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue_ca, _, _ = make_certificates(rogue_dir)
    rogue = client_certificate(rogue_dir, rogue_ca, rogue_dir / "ca.key", "rogue")
    old, new, revoked = new_key(), new_key(), new_key()
    keys = tmp_path / "api-keys"
    write_keys(keys, key_line("processor", old), key_line("retired", revoked))
    access = {
        "SCORER_SERVE_AUTH": "keys",
        "SCORER_SERVE_API_KEYS_PATH": str(keys),
        "SCORER_SERVE_TLS_CERT_PATH": str(cert),
        "SCORER_SERVE_TLS_KEY_PATH": str(key),
        "SCORER_SERVE_TLS_CLIENT_CA_PATH": str(ca),
    }
    serve = Serve(settings, tiny_model, tmp_path / "serve.log", f"{settings.input_topic}-replies", **access)
    procs.append(serve)
    client = Client(serve.http_port, ca, processor)
    wait_until(lambda: healthy(client, serve))  # /healthz needs no key; mutual TLS still applies

    for stranger in (Client(serve.http_port, ca, None), Client(serve.http_port, ca, rogue)):
        try:
            answer: object = stranger.call("/v1/score", tx("s1"), key=old)
        except OSError as exc:  # the handshake refused it (or the connection closed right after it)
            answer = exc
        assert isinstance(answer, OSError), answer
    assert scoring_requests(serve) == 0  # neither reached the app

    assert client.call("/v1/score", tx("k1"))[0] == 401
    assert client.call("/v1/score", tx("k2"), key=new)[0] == 401  # not issued yet
    status, body = client.call("/v1/score", tx("k3"), key=old)
    assert status == 200 and orjson.loads(body)["decision_source"] == "fallback"  # no scorer: the fallback
    write_keys(keys, key_line("processor", old))  # "retired" revoked
    wait_until(lambda: client.call("/v1/score", tx("k4"), key=revoked)[0] == 401)

    statuses = rotate_under_load(client, keys, old, new)
    assert statuses and set(statuses) == {200}, statuses  # not one request refused

    metrics = serve.metrics()  # the plain metrics port: no key, no client certificate
    assert 'scorer_serve_api_key_requests_total{key="missing",result="unauthorized"} 1.0' in metrics
    assert 'scorer_serve_api_key_requests_total{key="processor-2",result="accepted"}' in metrics
    assert old not in metrics and new not in metrics
    logged = serve.log.read_text()
    assert old not in logged and new not in logged and revoked not in logged
    reloads = [json.loads(line) for line in logged.splitlines() if '"api_keys_loaded"' in line]
    assert [r["names"] for r in reloads][-1] == ["processor-2"]
    assert serve.terminate() == 0


def rotate_under_load(client: Client, keys: Path, old: str, new: str) -> list[int]:
    """The rotation while a client sends without pause: the new key beside the old one, the client moves
    over once the new key is accepted, the old key goes. Returns the status of every request sent."""
    current = [old]
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            statuses.append(client.call("/v1/score", tx(f"rot-{n}", f"C{n % 7}"), key=current[0])[0])

    sender = threading.Thread(target=send)
    sender.start()
    try:
        write_keys(keys, key_line("processor", old), key_line("processor-2", new))
        wait_until(lambda: client.call("/v1/score", tx("probe-new"), key=new)[0] == 200)
        current[0] = new
        write_keys(keys, key_line("processor-2", new))
        wait_until(lambda: client.call("/v1/score", tx("probe-old"), key=old)[0] == 401)
        after = len(statuses)
        wait_until(lambda: len(statuses) >= after + 5)  # a few more with the new key alone
    finally:
        stop.set()
        sender.join(30)
    return statuses


def healthy(client: Client, serve: Serve) -> bool:
    try:
        return client.call("/healthz")[0] == 200
    except OSError:
        assert serve.popen.poll() is None, serve.describe()
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)
