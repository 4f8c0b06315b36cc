"""QA review of excursions, and what the signed-records views read: signatures, reviews, work queues.

After an alarm has been acknowledged (or has closed), a person with the ``qa`` role
records an assessment (impact: ``no_impact``, ``under_investigation``, or
``deviation_opened`` with a deviation reference; root cause; free text) and signs it.
Four eyes: nobody who signed an action on the alarm (acknowledge, shelve, unshelve) may
review it. An alarm is complete only when reviewed.

A review changes no alarm state, so it is written by whichever collector (or cluster
member) receives it, in one transaction with its signature and audit entries; the
four-eyes rule and "one review per alarm" are guarded inside that transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Final, Literal, get_args

from coldwatch.audit import AuditDraft
from coldwatch.identity_model import AccessDeniedError, IdentityError, RefusedError, SignerIdentity
from coldwatch.roles import SeparationError, check_four_eyes
from coldwatch.rules.lifecycle import Alarm
from coldwatch.signatures import (
    SELECT_SIGNATURES,
    SignatureDraft,
    StoredSignature,
    alarm_facts,
    bind,
    check_bindings,
)
from coldwatch.storage.base import alarm_from_row
from coldwatch.storage.identity_schema import INSERT_SIGNATURE
from coldwatch.storage.identity_store import IdentityStore, Write

__all__ = [
    "IMPACTS",
    "AlreadyReviewedError",
    "Impact",
    "NoSuchAlarmError",
    "NotReviewableError",
    "Review",
    "Reviews",
    "signature_problems",
]

Impact = Literal["no_impact", "under_investigation", "deviation_opened"]
IMPACTS: Final[tuple[str, ...]] = get_args(Impact)
_ALARM_COLUMNS: Final = (
    "SELECT a.id, a.device_id, a.metric, a.rule, a.severity, a.state, a.raised_ts_us, a.raised_received_us, "
    "a.value, a.limit_value, a.late, a.detail, a.cleared_ts_us, a.shelved_until_us, a.shelved_by, "
    "a.acknowledged_by FROM alarms AS a"
)
_REVIEW_COLUMNS: Final = (
    "SELECT alarm_id, impact, deviation_ref, root_cause, comment, reviewer, reviewed_us FROM alarm_reviews"
)
# The user actions whose signers may not review the same alarm.
_ACTION_EVENTS: Final = ("acknowledged", "shelved", "unshelved")


class NoSuchAlarmError(IdentityError):
    """No alarm with that id."""

    status = 404


class NotReviewableError(IdentityError):
    """The alarm is neither acknowledged nor closed: nothing to review yet."""

    status = 409


class AlreadyReviewedError(IdentityError):
    """The alarm has its review already (a review is never replaced)."""

    status = 409


@dataclass(frozen=True, slots=True)
class Review:
    """A QA assessment of one excursion."""

    alarm_id: int
    impact: str
    deviation_ref: str | None
    root_cause: str
    comment: str
    reviewer: str
    reviewed_us: int

    def facts(self, alarm: Mapping[str, object]) -> dict[str, object]:
        """What the reviewer's signature covers: the alarm's identity and the whole assessment."""
        return {**alarm, "review": {k: v for k, v in asdict(self).items() if k != "alarm_id"}}


def _review(row: Sequence[object]) -> Review:
    alarm_id, impact, ref, cause, comment, reviewer, at = row
    return Review(
        int(str(alarm_id)),
        str(impact),
        None if ref is None else str(ref),
        str(cause),
        str(comment),
        str(reviewer),
        int(str(at)),
    )


class Reviews:
    """Records reviews; reads signatures, reviews and the work queues of alarms."""

    def __init__(self, store: IdentityStore, zone: str) -> None:
        self.store = store
        self.zone = zone

    async def alarm(self, alarm_id: int) -> Alarm | None:
        """One alarm by id, or None."""
        rows = await self.store.fetch(_ALARM_COLUMNS + " WHERE a.id = ?", alarm_id)
        return alarm_from_row(rows[0]) if rows else None

    async def action_signers(self, alarm_id: int) -> set[str]:
        """Everyone who acted on (acknowledged, shelved, unshelved) or signed an action on the alarm."""
        rows = await self.store.fetch(
            "SELECT signer FROM signatures WHERE object_type = 'alarm' AND object_id = ?", str(alarm_id)
        )
        actors = await self.store.fetch(
            "SELECT actor FROM alarm_transitions WHERE alarm_id = ? AND event IN (?, ?, ?)",
            alarm_id,
            *_ACTION_EVENTS,
        )
        return {str(r[0]) for r in [*rows, *actors]}

    async def record(
        self,
        alarm_id: int,
        signer: SignerIdentity,
        *,
        impact: str,
        root_cause: str,
        comment: str,
        deviation_ref: str | None,
        meaning: str,
        reason: str,
        now_us: int,
    ) -> Review:
        """Record and sign a review of an acknowledged or closed alarm (four eyes, once)."""
        if impact not in IMPACTS:
            raise RefusedError(f"impact must be one of {', '.join(IMPACTS)}")
        deviation_ref = (deviation_ref or "").strip() or None
        if impact == "deviation_opened" and deviation_ref is None:
            raise RefusedError("a deviation reference is required when a deviation was opened")
        alarm = await self.alarm(alarm_id)
        if alarm is None:
            raise NoSuchAlarmError(f"no alarm {alarm_id}")
        if alarm.acknowledged_by is None and alarm.open:
            raise NotReviewableError(
                f"alarm {alarm_id} is neither acknowledged nor closed: acknowledge it first"
            )
        if await self.review_of(alarm_id) is not None:
            raise AlreadyReviewedError(
                f"alarm {alarm_id} has its review already (a review is never replaced)"
            )
        try:
            check_four_eyes(signer.name, [*await self.action_signers(alarm_id), alarm.acknowledged_by or ""])
        except SeparationError as exc:
            raise AccessDeniedError(str(exc)) from exc
        review = Review(alarm_id, impact, deviation_ref, root_cause, comment, signer.name, now_us)
        facts = review.facts(
            alarm_facts(alarm.id, alarm.key.device_id, alarm.key.metric, alarm.key.rule, alarm.raised_ts_us)
        )
        row, signature_entry = bind(
            "alarm_review",
            str(alarm_id),
            "review",
            facts,
            SignatureDraft(signer.name, signer.full_name, meaning, reason),
            now_us,
            self.zone,
        )
        entry = AuditDraft(
            at_us=now_us,
            actor=signer.name,
            action="alarm.reviewed",
            object_type="alarm",
            object_id=str(alarm_id),
            old_value=None,
            new_value=json.dumps(
                {k: v for k, v in asdict(review).items() if k not in {"alarm_id", "reviewed_us"}},
                ensure_ascii=False,
                sort_keys=True,
            ),
            reason=reason,
        )
        await self.store.apply(
            [
                # Guarded in the transaction: once per alarm, and never by one who signed an action on it.
                Write(
                    "INSERT INTO alarm_reviews(alarm_id, impact, deviation_ref, root_cause, comment, "
                    "reviewer, "
                    "reviewed_us) SELECT CAST(? AS BIGINT), ?, ?, ?, ?, ?, CAST(? AS BIGINT) "
                    "WHERE NOT EXISTS (SELECT 1 FROM alarm_reviews WHERE alarm_id = ?) "
                    "AND NOT EXISTS (SELECT 1 FROM signatures WHERE object_type = 'alarm' AND object_id = ? "
                    "AND signer = ?)",
                    (
                        alarm_id,
                        impact,
                        deviation_ref,
                        root_cause,
                        comment,
                        signer.name,
                        now_us,
                        alarm_id,
                        str(alarm_id),
                        signer.name,
                    ),
                    expect=1,
                    refusal=f"alarm {alarm_id} was reviewed meanwhile, "
                    f"or {signer.name} signed an action on it",
                ),
                Write(INSERT_SIGNATURE, row),
            ],
            [entry, signature_entry],
        )
        return review

    async def review_of(self, alarm_id: int) -> Review | None:
        """The alarm's review, or None."""
        rows = await self.store.fetch(_REVIEW_COLUMNS + " WHERE alarm_id = ?", alarm_id)
        return _review(rows[0]) if rows else None

    async def reviews_of(self, alarm_ids: Iterable[int]) -> dict[int, Review]:
        """The reviews of these alarms, by alarm id."""
        ids = list(alarm_ids)
        out: dict[int, Review] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in await self.store.fetch(_REVIEW_COLUMNS + f" WHERE alarm_id IN ({marks})", *chunk):
                review = _review(row)
                out[review.alarm_id] = review
        return out

    async def signatures_of(self, alarm_ids: Iterable[int]) -> dict[int, list[StoredSignature]]:
        """Every signature on these alarms (actions and review), oldest first, by alarm id."""
        ids = [str(i) for i in alarm_ids]
        out: dict[int, list[StoredSignature]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self.store.fetch(
                SELECT_SIGNATURES
                + f" WHERE object_type IN ('alarm', 'alarm_review') AND object_id IN ({marks}) "
                "ORDER BY signed_us, id",
                *chunk,
            )
            for row in rows:
                sig = StoredSignature.of(row)
                out[int(sig.object_id)].append(sig)
        return dict(out)

    async def awaiting(self, what: Literal["acknowledgement", "review"], limit: int = 500) -> list[Alarm]:
        """Alarms awaiting acknowledgement (unacknowledged), or review (acknowledged or closed, no review)."""
        if what == "acknowledgement":
            where = " WHERE a.state IN ('active_unacknowledged', 'cleared_unacknowledged')"
        else:
            where = (
                " WHERE (a.acknowledged_by IS NOT NULL OR a.state = 'closed') "
                "AND NOT EXISTS (SELECT 1 FROM alarm_reviews AS r WHERE r.alarm_id = a.id)"
            )
        rows = await self.store.fetch(
            _ALARM_COLUMNS + where + " ORDER BY a.raised_ts_us DESC, a.id DESC LIMIT ?", limit
        )
        return [alarm_from_row(r) for r in rows]


async def signature_problems(store: IdentityStore, entries: Iterable[object]) -> tuple[int, list[str]]:
    """How many signatures are stored, and every one not bound to its record and audit entry."""
    from coldwatch.audit import AuditEntry  # noqa: PLC0415

    signatures = [StoredSignature.of(r) for r in await store.fetch(SELECT_SIGNATURES + " ORDER BY id")]
    alarms = {
        str(r[0]): alarm_facts(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]))
        for r in await store.fetch("SELECT id, device_id, metric, rule, raised_ts_us FROM alarms")
    }
    reviews = {str(r.alarm_id): r for r in map(_review, await store.fetch(_REVIEW_COLUMNS))}
    reports = await _report_facts(store)
    from coldwatch.records.instruments import calibration_facts_of  # noqa: PLC0415

    calibrations = await calibration_facts_of(store)

    def facts_of(object_type: str, object_id: str) -> Mapping[str, object] | None:
        if object_type == "report":
            return reports.get(object_id)
        if object_type == "calibration":
            return calibrations.get(object_id)
        alarm = alarms.get(object_id)
        if alarm is None:
            return None
        if object_type == "alarm_review":
            review = reviews.get(object_id)
            return None if review is None else review.facts(alarm)
        return alarm

    audit = [e for e in entries if isinstance(e, AuditEntry)]
    return len(signatures), check_bindings(signatures, audit, facts_of)


async def _report_facts(store: IdentityStore) -> dict[str, Mapping[str, object]]:
    """What review signatures of generated reports are bound to, by report id (without the PDFs)."""
    from coldwatch.records.store import ReportSummary, report_facts  # noqa: PLC0415 - records on top

    rows = await store.fetch(
        "SELECT id, kind, subject, query, generated_us, generated_by, audit_head_seq, audit_head_hash, "
        "pdf_sha256, data_sha256, path FROM reports"
    )
    return {str(r[0]): report_facts(ReportSummary.of(r)) for r in rows}
