"""TLS on `scorer serve`'s API port, and mutual TLS: a client must show a certificate the client CA signed."""

from __future__ import annotations

import ssl

from scorer.config import Settings
from scorer.errors import ConfigError


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The API port's TLS context (None: plain HTTP); ConfigError naming the setting whose file is unusable.

    TLS 1.2 at least. With `serve_tls_client_ca_path` the handshake itself refuses a client without a
    certificate signed by that CA, before any HTTP is read.
    """
    if not settings.serve_tls_cert_path:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.serve_tls_cert_path, settings.serve_tls_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"serve_tls_cert_path {settings.serve_tls_cert_path} and serve_tls_key_path "
            f"{settings.serve_tls_key_path}: not a readable PEM certificate and its unencrypted key ({_why(exc)})"
        ) from exc
    if settings.serve_tls_client_ca_path:
        try:
            context.load_verify_locations(cafile=settings.serve_tls_client_ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"serve_tls_client_ca_path {settings.serve_tls_client_ca_path}: not a readable PEM CA "
                f"certificate ({_why(exc)})"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)
