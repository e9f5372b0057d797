"""What in the settings is a secret, and how a secret is masked in logs and messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SECRET_WORDS = ("password", "secret", "token", "key.pem", "keystore", "private", "credential", "jaas")


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask_url(url: str) -> str:
    """`url` with its password (user:PASSWORD@, a password= parameter) replaced by ***, for logs and messages.

    A libpq key=value string (`host=h password=p`) is masked too: messages may quote one."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", r"\1***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hosts = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    except ValueError:
        return "***"  # not even a URL: it could be anything, a password included
    query = re.sub(r"(^|&)((?:ssl)?password)=[^&]*", r"\1\2=***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()
