"""Roles, permissions and the separation of duties. Pure: no I/O, no clock.

One role per account; roles are not cumulative beyond reading:

- ``viewer``: reads alarms, devices, readings and the audit trail.
- ``operator``: a viewer who also acknowledges, shelves and unshelves alarms (signed).
- ``qa``: a viewer who also reviews excursions (signed).
- generating a report (an excursion report, a periodic report) needs ``operator`` or
  ``qa``; signing a report as reviewed needs ``qa`` (signed).
- ``operator`` and ``qa`` both register instruments, install and swap them on monitoring
  points, and record calibrations (signed): metrology is done on the floor, checked by QA.
- ``admin``: a viewer who also manages accounts and service tokens. An administrator
  signs nothing: account management and the records it controls stay in different hands.

Separation of duties (checked here, enforced by :mod:`coldwatch.identity` and
:mod:`coldwatch.review`):

- an excursion's review may not be signed by anyone who signed an action on that alarm
  (acknowledge, shelve or unshelve): four eyes;
- an administrator may not change their own role, disable themselves or reset their own
  password (they change it like anyone else, knowing the current one);
- the last enabled administrator may not be disabled or given another role;
- a service token reads only: it never signs and never manages accounts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, Literal, get_args

from coldwatch.errors import ColdwatchError

__all__ = [
    "READ_PERMISSIONS",
    "ROLE_NAMES",
    "SIGNED_PERMISSIONS",
    "Permission",
    "RoleName",
    "SeparationError",
    "check_admin_change",
    "check_four_eyes",
    "role_allows",
]

RoleName = Literal["viewer", "operator", "qa", "admin"]
ROLE_NAMES: Final[tuple[str, ...]] = get_args(RoleName)


class Permission(enum.StrEnum):
    """What a principal may do."""

    READ = "read"
    ACKNOWLEDGE = "alarm.acknowledge"
    SHELVE = "alarm.shelve"
    UNSHELVE = "alarm.unshelve"
    REVIEW = "alarm.review"
    REPORT_GENERATE = "report.generate"
    REPORT_REVIEW = "report.review"
    RECORDS_SIGN = "records.sign"  # register batches, dispatch and receive shipments (signed)
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"
    INSTRUMENTS_MANAGE = "instruments.manage"
    CALIBRATE = "instruments.calibrate"


READ_PERMISSIONS: Final = frozenset({Permission.READ, Permission.USERS_READ})
SIGNED_PERMISSIONS: Final = frozenset(
    {
        Permission.ACKNOWLEDGE,
        Permission.SHELVE,
        Permission.UNSHELVE,
        Permission.REVIEW,
        Permission.REPORT_REVIEW,
        Permission.RECORDS_SIGN,
        Permission.CALIBRATE,
    }
)
_INSTRUMENTS: Final = frozenset({Permission.INSTRUMENTS_MANAGE, Permission.CALIBRATE})
_BY_ROLE: Final[dict[str, frozenset[Permission]]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset(
        {
            Permission.READ,
            Permission.ACKNOWLEDGE,
            Permission.SHELVE,
            Permission.UNSHELVE,
            Permission.REPORT_GENERATE,
            Permission.RECORDS_SIGN,
        }
    )
    | _INSTRUMENTS,
    "qa": frozenset(
        {
            Permission.READ,
            Permission.REVIEW,
            Permission.REPORT_GENERATE,
            Permission.REPORT_REVIEW,
            Permission.RECORDS_SIGN,
        }
    )
    | _INSTRUMENTS,
    "admin": frozenset({Permission.READ, Permission.USERS_READ, Permission.USERS_MANAGE}),
}


def role_allows(role: str, permission: Permission, *, service: bool = False) -> bool:
    """Whether ``role`` grants ``permission``; a service token's role only ever grants reading."""
    granted = _BY_ROLE.get(role, frozenset())
    if service:
        granted &= READ_PERMISSIONS
    return permission in granted


class SeparationError(ColdwatchError):
    """An action refused because it would put two duties in one person's hands."""


def check_four_eyes(reviewer: str, signers: Iterable[str]) -> None:
    """Refuse a review by anyone who signed an action on the same alarm."""
    if reviewer in set(signers):
        raise SeparationError(
            f"{reviewer} signed an action on this alarm and may not review it: "
            "a second person must (four eyes)"
        )


_CHANGE_WORDS: Final = {
    "disable": "disable",
    "reset-password": "reset the password of",
    "set-role": "change the role of",
}


def check_admin_change(
    actor: str, target: str, change: str, *, target_is_admin: bool, enabled_admins: int
) -> None:
    """Refuse an administrator's change to their own account, or one that leaves no administrator.

    ``change`` is one of ``disable``, ``enable``, ``reset-password``, ``set-role:<role>``.
    """
    if actor == target and change != "enable":
        what = _CHANGE_WORDS.get(change.split(":", maxsplit=1)[0], "change")
        raise SeparationError(f"{actor} may not {what} their own account: another administrator must")
    removes_admin = change == "disable" or (change.startswith("set-role:") and change != "set-role:admin")
    if target_is_admin and removes_admin and enabled_admins <= 1:
        raise SeparationError(f"{target} is the last enabled administrator: appoint another one first")
