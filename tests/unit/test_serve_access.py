"""Who may call scorer serve: API keys from a key file (no key, a wrong key, a revoked key, a rotation with
two keys valid at once), per-key rate limits, their metrics, and the refusals at startup. The ASGI app runs
over a fake stream (test_serve_http.py); a fake clock drives the key file's checks and the token buckets."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from scorer.cli.main import main
from scorer.config import Settings
from scorer.errors import ConfigError
from scorer.serve.access import CHECK_EVERY_S, KeyAccess, KeyFile, key_line, new_key, parse_keys
from scorer.serve.metrics import ServeMetrics
from scorer.serve.server import access_for
from tests.unit.test_serve_http import build, call, exchange, tx


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key_file(path: Path, *lines: str) -> Path:
    path.write_text("# the keys of the test\n" + "".join(f"{line}\n" for line in lines))
    return path


def keyed(path: Path, clock: Clock, batch_max: int = 100, rate: float = 1000.0) -> tuple[Any, Any, Any]:
    """The app with keys from `path`, the fake clock driving reloads and rates."""
    access = KeyAccess(KeyFile(path, rate, clock=clock), batch_max, clock=clock)
    return build("decide", access=access, serve_batch_max=batch_max)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_or_a_wrong_key_is_401_and_counted_by_name_never_by_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, wrong = new_key(), new_key()
    app, stream, registry = keyed(key_file(tmp_path / "keys", key_line("acquirer-eu", good)), Clock())
    status, body, headers = exchange(app, "POST", "/v1/score", tx("a"))
    assert status == 401 and orjson.loads(body)["error"] == "unauthorized"
    assert headers[b"www-authenticate"] == b'Bearer realm="scorer"'
    status, body, headers = exchange(app, "POST", "/v1/score", tx("a"), **bearer(wrong))
    assert status == 401 and headers[b"www-authenticate"] == b'Bearer realm="scorer", error="invalid_token"'
    assert call(app, "POST", "/v1/score", tx("a"), Authorization=f"Basic {good}")[0] == 401  # Bearer only
    assert stream.published == []  # nothing reached Kafka
    assert call(app, "POST", "/v1/score", tx("a"), **bearer(good))[0] == 200
    assert (
        call(app, "POST", "/v1/score:batch", orjson.dumps([orjson.loads(tx("b"))]), **bearer(good))[0] == 200
    )
    sample = registry.get_sample_value
    assert sample("scorer_serve_api_key_requests_total", {"key": "missing", "result": "unauthorized"}) == 2
    assert sample("scorer_serve_api_key_requests_total", {"key": "unknown", "result": "unauthorized"}) == 1
    assert sample("scorer_serve_api_key_requests_total", {"key": "acquirer-eu", "result": "accepted"}) == 2
    assert sample("scorer_serve_requests_total", {"route": "score", "outcome": "unauthorized"}) == 3
    exposed = generate_latest(registry).decode()
    assert good not in exposed and wrong not in exposed
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert good not in logged and wrong not in logged


def test_the_probes_and_the_description_are_open_the_metrics_need_a_key(tmp_path: Path) -> None:
    key = new_key()
    app, _, _ = keyed(key_file(tmp_path / "keys", key_line("ops", key)), Clock())
    assert call(app, "GET", "/healthz")[0] == 200
    assert call(app, "GET", "/readyz")[0] == 200
    assert call(app, "GET", "/openapi.json")[0] == 200
    assert call(app, "GET", "/metrics")[0] == 401
    status, body = call(app, "GET", "/metrics", **bearer(key))
    assert status == 200 and b"scorer_serve_api_key_requests_total" in body


def test_a_key_rotation_needs_no_restart_and_a_revoked_key_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Add the new key beside the old one, move the client over, remove the old key: no request fails."""
    old, new = new_key(), new_key()
    clock = Clock()
    path = key_file(tmp_path / "keys", key_line("acquirer", old))
    app, _, registry = keyed(path, clock)
    assert call(app, "POST", "/v1/score", tx("r1"), **bearer(old))[0] == 200
    key_file(path, key_line("acquirer", old), key_line("acquirer-2", new))
    assert call(app, "POST", "/v1/score", tx("r2"), **bearer(old))[0] == 200  # not looked at yet: old keys
    clock.now += CHECK_EVERY_S
    assert call(app, "POST", "/v1/score", tx("r3"), **bearer(new))[0] == 200  # both valid now
    assert call(app, "POST", "/v1/score", tx("r4"), **bearer(old))[0] == 200
    key_file(path, key_line("acquirer-2", new))  # the old key revoked
    clock.now += CHECK_EVERY_S
    status, body = call(app, "POST", "/v1/score", tx("r5"), **bearer(old))
    assert status == 401 and "revoked" in orjson.loads(body)["detail"]
    assert call(app, "POST", "/v1/score", tx("r6"), **bearer(new))[0] == 200
    path.write_text("acquirer-2 not-a-hash\n")  # a broken edit: the keys in force stay
    for tid in ("r7", "r8"):
        clock.now += CHECK_EVERY_S
        assert call(app, "POST", "/v1/score", tx(tid), **bearer(new))[0] == 200
    assert [r.getMessage() for r in caplog.records].count("api_keys_not_reloaded") == 1  # said once
    accepted = {"key": "acquirer-2", "result": "accepted"}
    assert registry.get_sample_value("scorer_serve_api_key_requests_total", accepted) == 4


def test_a_key_over_its_rate_is_429_with_retry_after_until_its_bucket_refills(tmp_path: Path) -> None:
    key, other = new_key(), new_key()
    clock = Clock()
    path = key_file(tmp_path / "keys", key_line("slow", key, 2), key_line("other", other))
    app, stream, registry = keyed(path, clock, batch_max=2)
    assert [call(app, "POST", "/v1/score", tx(f"s{i}"), **bearer(key))[0] for i in range(2)] == [200, 200]
    status, body, headers = exchange(app, "POST", "/v1/score", tx("s2"), **bearer(key))
    assert status == 429 and orjson.loads(body)["error"] == "rate_limited" and headers[b"retry-after"] == b"1"
    assert call(app, "POST", "/v1/score", tx("o1"), **bearer(other))[0] == 200  # each key its own bucket
    clock.now += 0.5  # one token back: a batch of two still waits, one transaction passes
    batch = orjson.dumps([orjson.loads(tx("s3")), orjson.loads(tx("s4"))])
    assert call(app, "POST", "/v1/score:batch", batch, **bearer(key))[0] == 429
    assert call(app, "POST", "/v1/score", tx("s5"), **bearer(key))[0] == 200
    clock.now += 1.0
    assert call(app, "POST", "/v1/score:batch", batch, **bearer(key))[0] == 200
    assert len(stream.published) == 6  # nothing over the rate was published
    sample = registry.get_sample_value
    assert sample("scorer_serve_api_key_requests_total", {"key": "slow", "result": "rate_limited"}) == 2
    assert sample("scorer_serve_requests_total", {"route": "score_batch", "outcome": "rate_limited"}) == 1


def test_a_key_file_line_that_cannot_be_used_is_named() -> None:
    digest = key_line("x", "k").split()[1]
    cases = {
        "a\n": "expected NAME sha256:HEX",
        "a md5:abc\n": "sha256: and 64",
        f"a {digest} fast\n": "the rate must be",
        f"unknown {digest}\n": "not missing or unknown",
        f"a {digest}\nb {digest}\n": "already in the file",
        f"a {digest}\na {digest[:-1]}0\n": "already in the file",
    }
    for text, reason in cases.items():
        with pytest.raises(ConfigError, match=reason) as caught:
            parse_keys(text, "keys.txt", 10.0)
        assert str(caught.value).startswith("keys.txt:")
    assert [k.rate_per_s for k in parse_keys(f"a {digest} 5 # a comment\n\nb {digest[:-1]}0", "k", 9.0)] == [
        5,
        9,
    ]


def test_serve_refuses_to_start_open_unless_told(tmp_path: Path) -> None:
    metrics = ServeMetrics(CollectorRegistry())
    with pytest.raises(ConfigError, match="needs API keys"):
        access_for(Settings(), metrics)
    with pytest.raises(ConfigError, match="no API key in the file"):
        access_for(Settings(serve_api_keys_path=str(key_file(tmp_path / "empty"))), metrics)
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        access_for(Settings(serve_api_keys_path=str(tmp_path / "missing")), metrics)
    assert access_for(Settings(serve_auth="none"), metrics).identify(None).name == "open"


def serve(*argv: str, capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["serve", "--brokers", "127.0.0.1:9", "--metrics-port", "0", *argv])
    return code, capfd.readouterr().err.strip().splitlines()


def test_serve_startup_problems_are_one_line_before_serving(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, err = serve(capfd=capfd)
    assert code == 2 and len(err) == 1 and "needs API keys" in err[0] and "--no-auth" in err[0]
    code, err = serve("--no-auth", "--tls-cert", str(tmp_path / "cert.pem"), capfd=capfd)
    assert code == 2 and err == [
        "scorer: error: invalid settings: serve_tls_cert_path and serve_tls_key_path go together (TLS needs both)"
    ]
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    code, err = serve("--no-auth", "--tls-cert", str(bad), "--tls-key", str(bad), capfd=capfd)
    assert code == 2 and len(err) == 1 and "not a readable PEM certificate" in err[0]
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, err = serve("--no-auth", "--http-host", "127.0.0.1", "--http-port", str(port), capfd=capfd)
    assert code == 1 and err == [f"scorer: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_the_serve_flags_reach_the_settings() -> None:
    """Each flag sets its setting (--deadline-ms used to be parsed and then ignored)."""
    from scorer.cli.args import settings_from
    from scorer.cli.main import build_parser

    argv = ["serve", "--deadline-ms", "150", "--http-host", "127.0.0.1", "--api-keys", "k", "--no-auth"]
    argv += ["--tls-cert", "c", "--tls-key", "p", "--tls-client-ca", "ca", "--metrics-host", "127.0.0.2"]
    s = settings_from(build_parser().parse_args(argv))
    assert (s.serve_deadline_ms, s.http_host, s.serve_api_keys_path, s.serve_auth) == (
        150,
        "127.0.0.1",
        "k",
        "none",
    )
    assert (s.serve_tls_cert_path, s.serve_tls_key_path, s.serve_tls_client_ca_path) == ("c", "p", "ca")
    assert s.metrics_host == "127.0.0.2"


def test_reloads_are_counted_and_new_names_get_their_series(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = key_file(tmp_path / "keys", key_line("first", new_key()))
    access = access_for(Settings(serve_api_keys_path=str(path)), ServeMetrics(registry))
    assert isinstance(access, KeyAccess)
    key_file(path, key_line("first", new_key()), key_line("second", new_key()))
    access.keys.refresh()
    path.write_text("broken\n")
    access.keys.refresh()
    sample = registry.get_sample_value
    assert sample("scorer_serve_api_key_reloads_total", {"result": "ok"}) == 1
    assert sample("scorer_serve_api_key_reloads_total", {"result": "failed"}) == 1
    assert sample("scorer_serve_api_key_requests_total", {"key": "second", "result": "accepted"}) == 0


def test_the_api_keys_command_makes_revokes_and_lists_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api-keys"
    assert main(["api-keys", "new", "acquirer-eu", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["api-keys", "new", "acquirer-us", "--file", str(path), "--rate", "50"]) == 0
    other = capsys.readouterr().out.strip()
    assert path.stat().st_mode & 0o777 == 0o600 and key not in path.read_text()
    access = KeyAccess(KeyFile(path, 1000.0), 100)
    assert [access.identify(f"Bearer {k}").name for k in (key, other)] == ["acquirer-eu", "acquirer-us"]  # type: ignore[union-attr]
    assert main(["api-keys", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "acquirer-eu\tserve_key_rate_per_s",
        "acquirer-us\t50 transactions/s",
    ]
    assert main(["api-keys", "new", "acquirer-eu", "--file", str(path)]) == 1  # the name is taken
    assert main(["api-keys", "revoke", "acquirer-eu", "--file", str(path)]) == 0
    assert [k.name for k in parse_keys(path.read_text(), "k", 1.0)] == ["acquirer-us"]
    assert main(["api-keys", "revoke", "acquirer-eu", "--file", str(path)]) == 1  # gone already
    assert main(["api-keys", "list", "--file", str(tmp_path / "none")]) == 2
    assert main(["api-keys", "new", "two words", "--file", str(path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 5 and all(line.startswith(("scorer: error:", "key ")) for line in errors)


def test_the_documented_shell_line_matches_the_key_file_format() -> None:
    """docs/serve.md: the line of a key made elsewhere, with printf and sha256sum."""
    import subprocess

    key = new_key()
    line = "printf '%s sha256:%s\\n' acquirer-eu \"$(printf %s \"$KEY\" | sha256sum | cut -d' ' -f1)\""
    assert line.replace("\\\\n", "\\n") in Path(__file__).parents[2].joinpath("docs/serve.md").read_text()
    done = subprocess.run(
        ["bash", "-c", line],
        env={"KEY": key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == key_line("acquirer-eu", key)
