"""Model versions on the compacted `scorer-models` topic, so that a scorer without the registry's disk can
serve any version a deployment names: the only code that knows the topic's format.

A record's key is the label (`name/version`), its value a zip (deflated, fixed timestamps: the same files
give the same bytes) of the version's model.onnx, model.json, covers.npz (when present), MODEL_CARD.md and
a `manifest.json` {"label": "name/version", "files": {name: {"sha256": hex, "bytes": n}}}. Compaction keeps
the newest record of a label: publishing a version again (its card or model.json updated) replaces it.

A fetched bundle is verified before anything is written (the zip reads, its manifest names the key, every
listed file is there with its size and sha256, nothing else is) and unpacked under the cache as
`<cache>/.bundles/<xx>/<manifest sha256>/` (content-addressed: written once, into a temporary directory
renamed into place) with `<cache>/<name>/<version>` a symbolic link to it, replaced in one rename: a reader
sees the old version or the new one, never half of either. Bundles a link no longer names are left in place
(a scorer may still be reading one; each is well under 1 MB).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException

from scorer.config import Settings
from scorer.errors import ModelError, ScorerError
from scorer.kafka import clients
from scorer.kafka.compacted import read_compacted
from scorer.kafka.tables import TopicMissing
from scorer.model.onnx import read_meta, resolve_artefact

# Under the 1 MB that both librdkafka (message.max.bytes) and Kafka (the broker's message.max.bytes,
# max.partition.fetch.bytes) allow by default, with room for the key, headers and batch framing: a bundle
# this size needs no broker or client setting changed anywhere.
MAX_BUNDLE_BYTES = 900_000
MAX_UNPACKED_BYTES = 64_000_000  # what a bundle may say it unpacks to: a zip bomb is refused unread
MANIFEST = "manifest.json"
REQUIRED = ("model.onnx", "model.json", "MODEL_CARD.md")
OPTIONAL = ("covers.npz",)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no clock in the bytes
Refusal = Callable[[str], ModelError]  # what went wrong -> the error naming the label
LABEL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a label becomes a path: no '/', '..', or empties


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """What `publish_model` put on the topic."""

    label: str
    onnx_sha256: str
    bundle_bytes: int


def cache_root(settings: Settings) -> Path:
    """Where fetched versions are unpacked: settings.model_cache, or a directory of this user's under the
    system's temporary directory (created 0700; ModelError when another user owns it)."""
    if settings.model_cache:
        return Path(settings.model_cache)
    root = Path(tempfile.gettempdir()) / f"scorer-models-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():  # a shared /tmp: someone else's directory is not ours to trust
        raise ModelError(f"{root} belongs to another user: set model_cache (SCORER_MODEL_CACHE)")
    return root


def pack(directory: Path) -> bytes:
    """The bundle of the version in `directory`. ModelError when it is not a model version (model.json,
    model.onnx or MODEL_CARD.md missing, or a label that cannot be a cache directory), ScorerError when
    the bundle is over MAX_BUNDLE_BYTES. The same files give the same bytes (with the same zlib)."""
    return _bundle(directory)[0]


def _bundle(directory: Path) -> tuple[bytes, dict[str, Any]]:
    directory = resolve_artefact(directory)
    label = read_meta(directory).label
    _label_parts(label)  # refused here, not by every scorer that fetches it
    names = [*REQUIRED, *(n for n in OPTIONAL if (directory / n).is_file())]
    contents: dict[str, bytes] = {}
    for name in names:
        try:
            contents[name] = (directory / name).read_bytes()
        except OSError as exc:
            raise ModelError(f"{label}: {directory / name} cannot be read ({exc.strerror})") from exc
    files = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in contents.items()}
    manifest = {"label": label, "files": files}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in [(MANIFEST, _manifest_bytes(manifest)), *sorted(contents.items())]:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=9)
    raw = out.getvalue()
    if len(raw) > MAX_BUNDLE_BYTES:
        raise ScorerError(
            f"{label}: the bundle is {len(raw):,} bytes, over the {MAX_BUNDLE_BYTES:,} a models-topic record "
            "may hold"
        )
    return raw, manifest


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def publish_model(settings: Settings, directory: Path, timeout_s: float = 10.0) -> PublishedModel:
    """Put the version in `directory` on the models topic under its label and wait for the broker's
    acknowledgement. A label published before is replaced (compaction keeps the newest). ModelError when
    the directory is not a version, ScorerError when the bundle is too large or the broker refuses it."""
    raw, manifest = _bundle(directory)
    label = str(manifest["label"])
    producer = clients.producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(settings.models_topic, raw, label.encode(), on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish {label} to {settings.models_topic}: {failures or 'timed out'}")
    return PublishedModel(label, manifest["files"]["model.onnx"]["sha256"], len(raw))


def fetch_model(settings: Settings, label: str, cache: Path, timeout_s: float = 10.0) -> Path:
    """Read the models topic to its end and unpack `label`'s newest bundle under `cache`; its directory.
    ModelError when the topic does not exist or cannot be read, when the label is not on it (naming
    those that are) or when its bundle fails verification (unpack)."""
    topic = settings.models_topic
    try:
        table = read_compacted(settings, topic, timeout_s)
    except TopicMissing as exc:
        raise ModelError(f"no model {label!r}: not in the registry, and {exc}") from exc
    except (KafkaException, ScorerError) as exc:
        raise ModelError(
            f"no model {label!r}: not in the registry, and {topic} cannot be read ({exc})"
        ) from exc
    raw = table.get(label.encode())
    if raw is None:
        known = ", ".join(sorted(k.decode("utf-8", "replace") for k in table)) or "none"
        raise ModelError(f"no model {label!r} in the registry nor on {topic} (published: {known})")
    return unpack(label, raw, cache)


def unpack(label: str, raw: bytes, cache: Path) -> Path:
    """Verify the bundle `raw` published under `label`, then make `cache/name/version` hold it (reused when
    it already does). ModelError naming the label and the file on any integrity failure: nothing is
    written then, and what the cache held stays."""
    name, version = _label_parts(label)
    contents, manifest = _verified(label, raw)
    bundles = cache / ".bundles"  # two levels down: Registry(cache) never lists a bundle as a version
    digest = hashlib.sha256(manifest).hexdigest()
    stored = bundles / digest[:2] / digest
    if not _intact(stored, contents, manifest):
        stored.parent.mkdir(parents=True, exist_ok=True)
        _write_bundle(stored, contents, manifest)
    link = cache / name / version
    _relink(link, stored)
    return link


def _label_parts(label: str) -> tuple[str, str]:
    parts = label.split("/")
    if len(parts) != 2 or not all(LABEL_PART.fullmatch(p) for p in parts):
        raise ModelError(f"{label!r}: not a name/version label that can be a directory")
    return parts[0], parts[1]


def _verified(label: str, raw: bytes) -> tuple[dict[str, bytes], bytes]:
    """The bundle's files by name and its manifest's bytes, every check passed; ModelError otherwise."""

    def refuse(what: str) -> ModelError:
        return ModelError(f"{label}: integrity: {what}")

    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise refuse(f"the bundle is not a readable zip ({exc})") from exc
    with zf:
        names = zf.namelist()
        allowed = {MANIFEST, *REQUIRED, *OPTIONAL}
        strange = [n for n in names if n not in allowed]  # a path ('../x', '/etc/x', 'a/b') is never allowed
        if strange or len(set(names)) != len(names):
            raise refuse(f"unexpected or repeated names in the bundle: {strange or names}")
        if MANIFEST not in names:
            raise refuse(f"no {MANIFEST} in the bundle")
        manifest = _read(zf, MANIFEST, 1_000_000, refuse)
        files = _listed(manifest, label, refuse)
        if set(files) | {MANIFEST} != set(names):
            unlisted = sorted(set(names) - set(files) - {MANIFEST})
            absent = sorted(set(files) - set(names))
            raise refuse(f"files listed but absent {absent}, present but unlisted {unlisted}")
        contents = {}
        for name, (sha256, size) in files.items():
            data = _read(zf, name, size, refuse)
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
                raise refuse(f"{name} is not the file the manifest lists ({len(data)} bytes, sha256 differs)")
            contents[name] = data
    try:
        meta = orjson.loads(contents["model.json"])
        named = f"{meta['name']}/{meta['version']}"
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise refuse(f"model.json is malformed ({exc})") from exc
    if named != label:  # decisions carry model.json's label: it must be the one deployments name
        raise refuse(f"model.json names {named!r}, not the label it was published under")
    return contents, manifest


def _read(zf: zipfile.ZipFile, name: str, limit: int, refuse: Refusal) -> bytes:
    """At most limit + 1 bytes of a member: more than the manifest says is refused, never inflated."""
    try:
        with zf.open(name) as member:
            return bytes(member.read(limit + 1))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise refuse(f"{name} cannot be read from the bundle ({exc})") from exc


def _listed(manifest: bytes, label: str, refuse: Refusal) -> dict[str, tuple[str, int]]:
    """The manifest's {name: (sha256, bytes)}; ModelError when it is malformed or names another label."""
    try:
        doc = orjson.loads(manifest)
        files = {str(n): (str(f["sha256"]), int(f["bytes"])) for n, f in doc["files"].items()}
        found = doc["label"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise refuse(f"{MANIFEST} is malformed ({exc})") from exc
    if found != label:
        raise refuse(f"{MANIFEST} names {found!r}, not the label it was published under")
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise refuse(f"{MANIFEST} does not list {missing}")
    if any(size < 0 for _, size in files.values()) or sum(s for _, s in files.values()) > MAX_UNPACKED_BYTES:
        raise refuse(f"{MANIFEST} lists sizes below 0 or above {MAX_UNPACKED_BYTES:,} bytes in all")
    return files


def _intact(stored: Path, contents: dict[str, bytes], manifest: bytes) -> bool:
    """The stored bundle holds exactly these files (a cache someone altered is written again)."""
    try:
        if (stored / MANIFEST).read_bytes() != manifest:
            return False
        return all((stored / n).read_bytes() == b for n, b in contents.items())
    except OSError:
        return False


def _write_bundle(stored: Path, contents: dict[str, bytes], manifest: bytes) -> None:
    """Write into a temporary directory beside `stored`, then rename it into place: a reader never sees
    a bundle half written. An altered bundle in the way is moved aside first."""
    temporary = Path(tempfile.mkdtemp(prefix=".unpack-", dir=stored.parent))
    try:
        for name, data in [*contents.items(), (MANIFEST, manifest)]:
            (temporary / name).write_bytes(data)
        if stored.exists():
            aside = Path(tempfile.mkdtemp(prefix=".altered-", dir=stored.parent))
            os.rename(stored, aside / "bundle")
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(temporary, stored)
        except OSError:
            if not _intact(stored, contents, manifest):  # another scorer on this host wrote it meanwhile
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _relink(link: Path, stored: Path) -> None:
    """Point `link` at `stored`, replacing what it pointed at in one rename."""
    target = os.path.relpath(stored, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists() and not link.is_symlink():  # a directory put there by hand: moved aside, not merged
        aside = Path(tempfile.mkdtemp(prefix=".replaced-", dir=link.parent))
        os.rename(link, aside / link.name)
        shutil.rmtree(aside, ignore_errors=True)
    temporary = link.parent / f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
