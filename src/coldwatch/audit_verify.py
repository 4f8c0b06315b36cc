"""The audit commands that need the keys: ``verify``, ``public-key`` and ``rotate-key``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from coldwatch.audit import Anchor
from coldwatch.audit_keys import (
    Anchorer,
    anchor_path,
    current_signer,
    find_signer,
    key_path,
    public_pem,
    read_anchors,
    read_trusted_keys,
    rotation_draft,
    write_new_key,
)
from coldwatch.audit_seal import AuditEvidence, AuditKeyError, check_trail
from coldwatch.config import Config
from coldwatch.storage import open_storage

__all__ = ["public_key_command", "rotate_key_command", "verify_command"]


def verify_command(
    config: Config,
    evidence: AuditEvidence,
    args: argparse.Namespace,
    bindings: tuple[int, list[str]] = (0, []),
) -> int:
    """Check the stored trail, its seals, the anchor file, the guards and the electronic signatures' bindings.

    ``bindings``: how many electronic signatures are stored and every one not bound to its
    record and audit entry (coldwatch.review.signature_problems). 0 intact, 1 not, 2 unusable.
    """
    anchor = None
    if args.anchor:
        seq, _, digest = args.anchor.partition(":")
        try:
            anchor = Anchor(int(seq), digest)
        except ValueError:
            print(f"error: --anchor must be SEQ:HASH, got {args.anchor!r}", file=sys.stderr)
            return 2
    try:
        if args.public_key:
            trusted = read_trusted_keys(args.public_key)
        else:
            signer = find_signer(config)
            trusted = {signer.key_id: signer.public_key} if signer is not None else {}
        anchors = read_anchors(args.anchor_file or anchor_path(config))
    except (AuditKeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = check_trail(
        evidence.entries,
        evidence.seals,
        high_water=evidence.high_water,
        trusted=trusted,
        anchors=anchors,
        anchor=anchor,
    )
    guards = "; ".join(evidence.guard_problems)
    if report.ok and guards:
        report = dataclasses.replace(
            report,
            ok=False,
            kind="guards",
            problem=f"the append-only guards were removed or altered ({guards}); the entries verify",
        )
    print(report.describe())
    print(f"append-only guards: {'PROBLEM: ' + guards if guards else 'all in place'}")
    signed, problems = bindings
    if problems:
        print(f"electronic signatures: {len(problems)} of {signed} NOT bound to their records:")
        for problem in problems:
            print(f"  {problem}")
    else:
        print(f"electronic signatures: {signed} bound to their records and the audit trail")
    return 0 if report.ok and not problems else 1


def public_key_command(config: Config) -> int:
    """Print the signing key's public half (PEM); the private key is never printed."""
    try:
        signer = find_signer(config)
    except AuditKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if signer is None:
        print(
            f"error: no signing key at {key_path(config)}: start the collector once, or configure "
            "audit.signing_key_file",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(public_pem(signer.public_key))
    print(f"key id {signer.key_id}", file=sys.stderr)
    return 0


async def rotate_key_command(config: Config, *, actor: str, reason: str) -> int:
    """Replace the key file's key: the old key seals an entry naming the new one, then the file changes.

    Run it with every collector of the database stopped (they hold the old key in memory).
    """
    try:
        old = find_signer(config)
    except AuditKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if old is None or config.audit.signing_key is not None:
        print(
            "error: rotate-key replaces a key file; "
            + (
                "there is none yet"
                if old is None
                else "this key comes from audit.signing_key (the environment): put the new key there "
                "yourself; the collector then records the change as a replacement"
            ),
            file=sys.stderr,
        )
        return 1
    path = key_path(config)
    # The new key is on disk before the trail names it, and takes the old one's place after.
    pending = path.with_name(path.name + ".next")
    new = write_new_key(pending)
    storage = open_storage(config.storage.location)
    await storage.open()
    try:
        current_signer.set(old)
        await storage.record_audit([rotation_draft(old, new, time.time_ns() // 1000, actor, reason)])
        await Anchorer(storage, old, anchor_path(config), config.audit.anchor_interval_s).anchor_now()
    finally:
        await storage.close()
    pending.replace(path)
    print(f"signing key rotated from {old.key_id} to {new.key_id}; the new public key:", file=sys.stderr)
    sys.stdout.write(public_pem(new.public_key))
    return 0
