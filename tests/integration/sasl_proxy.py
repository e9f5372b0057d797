"""TLS and SASL/SCRAM-SHA-512 in front of the real tansu broker, for the SASL_SSL test.

tansu 0.6 can require SCRAM, but refuses librdkafka's SCRAM-SHA-512 handshake ("Unsupported SASL mechanism:
broker's supported mechanisms: SCRAM-SHA-512"), and Apache Kafka cannot be installed here. So this proxy
does what a SASL_SSL listener of Kafka does before the first real request: it terminates TLS with a
certificate from a test CA, answers SaslHandshake and SaslAuthenticate itself (RFC 5802 / RFC 7677
SCRAM-SHA-512, verifying the client's proof against the one user it knows), and from then on relays the
connection byte for byte to tansu, which advertises the proxy's address so every client connection comes
through here. ApiVersions before authentication is relayed too. The client side (librdkafka in `scorer`)
is exactly what runs against a production Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 58, 33, 34
MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 4096


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a throwaway CA and a server certificate for 127.0.0.1."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=scorer-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return ca, cert, key


@dataclass
class ScramUser:
    """The server's stored credentials for one user (it never keeps the password itself)."""

    name: str
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def create(cls, name: str, password: str) -> ScramUser:
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
        client_key = _hmac(salted, b"Client Key")
        return cls(name, salt, hashlib.sha512(client_key).digest(), _hmac(salted, b"Server Key"))


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha512).digest()


@dataclass
class Exchange:
    """One SCRAM conversation: client-first -> server-first -> client-final -> server-final."""

    user: ScramUser
    client_first_bare: str = ""
    server_first: str = ""
    nonce: str = ""

    def first(self, message: str) -> str:
        bare = message.split(",", 2)[2]  # drop the GS2 header "n,,"
        attrs = dict(part.split("=", 1) for part in bare.split(","))
        if attrs.get("n") != self.user.name:
            raise PermissionError(f"unknown user {attrs.get('n')!r}")
        self.client_first_bare = bare
        self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.user.salt).decode()},i={ITERATIONS}"
        return self.server_first

    def final(self, message: str) -> str:
        without_proof, _, proof = message.rpartition(",p=")
        attrs = dict(part.split("=", 1) for part in without_proof.split(","))
        if attrs.get("r") != self.nonce:
            raise PermissionError("nonce mismatch")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(self.user.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.sha512(client_key).digest(), self.user.stored_key):
            raise PermissionError("wrong password")
        return "v=" + base64.b64encode(_hmac(self.user.server_key, auth_message)).decode()


@dataclass
class SaslSslProxy:
    """Listens with TLS on `port`; relays authenticated connections to tansu on `upstream_port`."""

    port: int
    upstream_port: int
    user: ScramUser
    cert: Path
    key: Path
    authenticated: int = 0
    refused: list[str] = field(default_factory=list)

    def start(self) -> SaslSslProxy:
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="sasl-proxy")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the SASL_SSL proxy did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=context)
        )
        ready.set()
        try:
            self.loop.run_forever()
        finally:  # cancel the open connections (their writers close), then close the loop itself
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            if await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
    ) -> bool:  # fmt: skip
        """Until SCRAM succeeds: relay ApiVersions, answer the SASL requests, refuse anything else."""
        exchange = Exchange(self.user)
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            body = frame[10 + struct.unpack(">h", frame[8:10])[0] :]  # after the client id
            if api_key == API_VERSIONS:
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                writer.write(await _read_whole_frame(up_reader))
            elif api_key == SASL_HANDSHAKE:
                mechanism = body[2 : 2 + struct.unpack(">h", body[:2])[0]].decode()
                error = 0 if mechanism == MECHANISM else UNSUPPORTED_SASL_MECHANISM
                name = MECHANISM.encode()
                writer.write(_frame(correlation, struct.pack(">hih", error, 1, len(name)) + name))
                if error:
                    self.refused.append(f"mechanism {mechanism}")
                    return False
            elif api_key == SASL_AUTHENTICATE and version <= 1:
                message = body[4 : 4 + struct.unpack(">i", body[:4])[0]].decode()
                try:
                    reply = exchange.first(message) if not exchange.server_first else exchange.final(message)
                except (PermissionError, ValueError, KeyError) as exc:
                    self.refused.append(str(exc))
                    writer.write(
                        _frame(
                            correlation, _auth_response(version, SASL_AUTHENTICATION_FAILED, str(exc), b"")
                        )
                    )
                    await writer.drain()
                    return False
                writer.write(_frame(correlation, _auth_response(version, 0, None, reply.encode())))
                if reply.startswith("v="):
                    self.authenticated += 1
                    await writer.drain()
                    return True
            else:
                self.refused.append(f"api {api_key} v{version} before authentication")
                return False
            await writer.drain()


def _auth_response(version: int, error: int, message: str | None, data: bytes) -> bytes:
    text = b"\xff\xff" if message is None else struct.pack(">h", len(message)) + message.encode()
    out = struct.pack(">h", error) + text + struct.pack(">i", len(data)) + data
    return out + (struct.pack(">q", 0) if version >= 1 else b"")


def _frame(correlation: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation) + body
    return struct.pack(">i", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def _read_whole_frame(reader: asyncio.StreamReader) -> bytes:
    frame = await _read_frame(reader)
    return struct.pack(">i", len(frame)) + frame


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65_536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()
