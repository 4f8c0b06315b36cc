"""What sealing the audit trail costs on the ingest path.

Appends audit entries in SQLite transactions as a batch does (in memory, so that only
the CPU cost shows), with and without a signer, and prints the time per append and per
entry. One Ed25519
signature seals a whole append, however many entries it holds.

    python benchmarks/audit_seal.py [APPENDS] [ENTRIES_PER_APPEND]
"""

from __future__ import annotations

import sqlite3
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldwatch.audit import AuditDraft
from coldwatch.audit_keys import current_signer
from coldwatch.audit_seal import Signer
from coldwatch.storage.audit_sqlite import append_linked
from coldwatch.storage.sqlite import MIGRATIONS


def drafts(n: int, i: int) -> list[AuditDraft]:
    return [
        AuditDraft(
            at_us=1_714_564_800_000_000 + i * 1000 + j,
            actor="coldwatch",
            action="alarm.raised",
            object_type="alarm",
            object_id=str(i),
            old_value=None,
            new_value="active_unacknowledged",
            reason="temp_c above 38.0 for 60 s",
        )
        for j in range(n)
    ]


def run(appends: int, per_append: int, signer: Signer | None) -> float:
    """Seconds for ``appends`` transactions of ``per_append`` entries on an in-memory database."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for script in MIGRATIONS:
        conn.executescript(script)
    token = current_signer.set(signer)
    try:
        start = time.perf_counter()
        for i in range(appends):
            conn.execute("BEGIN IMMEDIATE")
            append_linked(conn, drafts(per_append, i))
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        current_signer.reset(token)
        conn.close()


def sign_only(count: int) -> float:
    signer = Signer(Ed25519PrivateKey.generate())
    start = time.perf_counter()
    for i in range(count):
        signer.seal(1, i, i, "a" * 64)
    return (time.perf_counter() - start) / count


def main() -> None:
    appends = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    per_append = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    signer = Signer(Ed25519PrivateKey.generate())
    # Alternate the two, five rounds each, and keep each one's best: the machine is shared.
    plain = min(run(appends, per_append, None) for _ in range(5))
    signed = min(run(appends, per_append, signer) for _ in range(5))
    extra_us = (signed - plain) / appends * 1e6
    print(f"Ed25519 seal alone: {sign_only(5000) * 1e6:.1f} us")
    print(
        f"{appends} appends of {per_append} entries: unsigned {plain / appends * 1e6:.0f} us per append, ",
        end="",
    )
    print(
        f"signed {signed / appends * 1e6:.0f} us: +{extra_us:.0f} us per append, +{extra_us / per_append:.1f} us per entry"
    )


if __name__ == "__main__":
    main()
