"""The audit trail's shell: the signing key, the anchor file, and the checks at start-up.

The private key comes from ``audit.signing_key`` (usually the environment variable
``COLDWATCH_AUDIT__SIGNING_KEY``) or from ``audit.signing_key_file``. With neither, the
collector generates a key file (mode 0600) beside the database on its first start, so a
demo works out of the box, and warns: whoever can read that file can sign, so a production
site keeps the key where the database's writers cannot read it.

The signer in use is held in a context variable that the daemon sets before it starts its
tasks: every append of audit entries in those tasks (batches, the notification deliverer,
start-up entries), on any connection and on SQLite's worker thread too, seals with it,
without a signer having to be passed through every layer. Code that runs without one
(a tool, a test) appends unsigned entries, which :func:`coldwatch.audit_seal.check_trail`
reports as appended without the key.

The anchor file is JSON lines, appended and fsynced: one signed chain head per line
(:func:`coldwatch.audit_seal.anchor_line`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import stat
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldwatch.audit import AuditDraft
from coldwatch.audit_seal import (
    GUARDS_RESTORED,
    KEY_REPLACED,
    KEY_ROTATED,
    AnchorRecord,
    AuditKeyError,
    Signer,
    anchor_line,
    key_id,
    parse_anchor_line,
    public_key_from_text,
    public_key_text,
)

if TYPE_CHECKING:
    from coldwatch.config import Config
    from coldwatch.storage.base import Storage

__all__ = [
    "Anchorer",
    "anchor_path",
    "append_anchor",
    "current_signer",
    "find_signer",
    "key_path",
    "load_signer",
    "public_pem",
    "read_anchors",
    "read_trusted_keys",
    "rotation_draft",
    "start_up_checks",
    "write_new_key",
]

log = logging.getLogger(__name__)

current_signer: ContextVar[Signer | None] = ContextVar("coldwatch_audit_signer", default=None)


def _beside(config: Config, suffix: str) -> Path:
    """Beside the SQLite database; with PostgreSQL, beside the configuration file (or in data/)."""
    if not config.storage.postgres:
        db = config.storage.path
        return db.with_name(db.name + suffix)
    source = Path(config.source)
    folder = source.parent if source.is_file() else Path("data")
    return folder / ("coldwatch" + suffix)


def key_path(config: Config) -> Path:
    """Where the private key file is (``audit.signing_key_file``, or :func:`_beside`)."""
    return config.audit.signing_key_file or _beside(config, ".audit-key")


def anchor_path(config: Config) -> Path:
    """Where the anchor file is (``audit.anchor_file``, or :func:`_beside`)."""
    return config.audit.anchor_file or _beside(config, ".audit-anchors.jsonl")


def _private_from_text(text: str, where: str) -> Ed25519PrivateKey:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        # Never the text itself: it is the secret.
        raise AuditKeyError(f"{where}: not an Ed25519 private key (PEM or base64 of 32 bytes)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{where}: not an Ed25519 private key")
    return key


def find_signer(config: Config) -> Signer | None:
    """The configured signing key, or None if there is none yet."""
    secret = config.audit.signing_key
    if secret is not None:
        return Signer(_private_from_text(secret.get_secret_value(), "audit.signing_key"))
    path = key_path(config)
    if not path.exists():
        return None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("audit signing key %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    return Signer(_private_from_text(path.read_text(encoding="utf-8"), str(path)))


def load_signer(config: Config) -> Signer:
    """The configured signing key; a new key file when none is configured or found (first start)."""
    found = find_signer(config)
    if found is not None:
        return found
    path = key_path(config)
    signer = write_new_key(path)
    log.warning(
        "audit trail: generated signing key %s (%s). Whoever can read this file can sign audit "
        "entries: a production site keeps it where the database's writers cannot read it "
        "(audit.signing_key_file, or COLDWATCH_AUDIT__SIGNING_KEY) and gives inspectors the "
        "public key (coldwatch audit public-key)",
        path,
        signer.key_id,
    )
    return signer


def write_new_key(path: Path) -> Signer:
    """Generate a key and write it to ``path`` (mode 0600), replacing any key there atomically."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return Signer(key)


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as a PEM ``PUBLIC KEY`` block (what an inspector keeps)."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def read_trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys (PEM or ``ed25519:<base64>``) by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            public = public_key_from_text(path.read_text(encoding="utf-8"))
        except AuditKeyError as exc:
            raise AuditKeyError(f"{path}: {exc}") from exc
        keys[key_id(public)] = public
    return keys


def append_anchor(path: Path, record: AnchorRecord) -> None:
    """Append one anchor line and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(anchor_line(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_anchors(path: Path) -> list[AnchorRecord]:
    """Every anchor in the file (none if it does not exist)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_anchor_line(line))
        except AuditKeyError as exc:
            raise AuditKeyError(f"{path} line {number}: {exc}") from exc
    return records


class Anchorer:
    """Writes the signed chain head to the anchor file at intervals and at shutdown."""

    def __init__(self, storage: Storage, signer: Signer, path: Path, interval_s: float) -> None:
        self._storage, self._signer, self._path, self._interval_s = storage, signer, path, interval_s
        self._last: int | None = None
        self.on_failure: Callable[[], None] = lambda: None  # the daemon counts failures in a metric

    async def run(self) -> None:
        """Anchor every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.anchor_now()

    async def anchor_now(self) -> AnchorRecord | None:
        """Anchor the last signed entry if it moved since the last anchor; log a failure, never raise it."""
        try:
            head = await self._storage.audit_head()
            if head is None or head.seq == self._last:
                return None
            record = self._signer.anchor(head.origin, head.seq, head.hash, time.time_ns() // 1000)
            await asyncio.to_thread(append_anchor, self._path, record)
        except Exception as exc:  # a task boundary: anchoring must not stop the collector
            self.on_failure()
            log.error("audit trail: could not anchor the chain head to %s: %s", self._path, exc)  # noqa: TRY400
            return None
        self._last = head.seq
        return record


async def start_up_checks(storage: Storage, signer: Signer, now_us: int) -> list[AuditDraft]:
    """Restore missing append-only guards and notice a changed key; return the entries to record."""
    drafts: list[AuditDraft] = []
    restored = await storage.restore_audit_guards()
    if restored:
        names = ", ".join(restored)
        log.error("audit trail: append-only guards missing, altered or joined by others, restored: %s", names)
        drafts.append(
            AuditDraft(
                at_us=now_us,
                actor="coldwatch",
                action=GUARDS_RESTORED,
                object_type="audit_trail",
                object_id="guards",
                old_value="missing or altered",
                new_value=names,
                reason="append-only guards found missing or altered at start-up and restored",
            )
        )
    head = await storage.audit_head()
    if head is not None and head.key_id != signer.key_id:
        # Only now the scan for the rotation entry that may have named this key.
        head = await storage.audit_head(with_rotation=True)
    mine = public_key_text(signer.public_key)
    if head is not None and head.key_id != signer.key_id and head.rotated_to != mine:
        log.warning(
            "audit trail: the last entries were signed by %s, not by this collector's key %s, and no "
            "rotation entry names it: recording the key replacement",
            head.key_id,
            signer.key_id,
        )
        drafts.append(
            AuditDraft(
                at_us=now_us,
                actor="coldwatch",
                action=KEY_REPLACED,
                object_type="audit_key",
                object_id=signer.key_id,
                old_value=head.key_id,
                new_value=public_key_text(signer.public_key),
                reason="signing key replaced without the previous key (lost or withdrawn)",
            )
        )
    return drafts


def rotation_draft(old: Signer, new: Signer, now_us: int, actor: str, reason: str) -> AuditDraft:
    """The entry, to be sealed by ``old``, that hands the trail over to ``new``."""
    return AuditDraft(
        at_us=now_us,
        actor=actor,
        action=KEY_ROTATED,
        object_type="audit_key",
        object_id=new.key_id,
        old_value=old.key_id,
        new_value=public_key_text(new.public_key),
        reason=reason,
    )
