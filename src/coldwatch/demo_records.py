"""The demo's instruments: one per monitoring point, installed and calibrated, all DEMO-ONLY.

Without them every demo reading would be flagged as taken out of calibration (a point with
no instrument has no calibrated measurement), which is true but not what a first look at
coldwatch should show. The calibration records are signed by the demo's operator account
with a reason that says the demo made them; their certificates are marked SIMULATED. One
instrument (the LN2 store's) is due within the alert window, so the Instruments page and
the overview show a "calibration due" state and its alert alarm from the start.
"""

from __future__ import annotations

from coldwatch.config import Config
from coldwatch.identity import Identity
from coldwatch.identity_model import Principal, SignerIdentity
from coldwatch.records.instruments import Instruments
from coldwatch.roles import Permission
from coldwatch.storage.identity_store import IdentityStore

__all__ = ["DUE_SOON_DEVICE", "ensure_demo_instruments"]

DAY_US = 86_400_000_000
DUE_SOON_DEVICE = "ln2-dewar-01"
_REASON = "DEMO-ONLY instrument record made by coldwatch demo's set-up (SIMULATED)"
_MODELS = {
    "particle_counter": ("DEMO LPC-100 particle counter", "Demo Instruments"),
    "incubator": ("DEMO IR-CO2 incubator probe", "Demo Instruments"),
    "cryoshipper": ("DEMO PT100 cryogenic probe pair", "Demo Instruments"),
}


async def ensure_demo_instruments(
    store: IdentityStore, identity: Identity, config: Config, operator: tuple[str, str], now_us: int
) -> int:
    """Register, install and calibrate one instrument per point, once; the number registered."""
    records = Instruments(store, config.site.timezone, config.device_map())
    if await records.instruments():
        return 0
    name, password = operator
    account = next(a for a in await identity.accounts() if a.name == name)
    who = Principal(account.name, account.full_name, account.role, "person")
    meaning = config.identity.meanings("calibrate")[0]
    signed = await identity.verify_signer(
        action="calibrate",
        permission=Permission.CALIBRATE,
        meaning=meaning,
        user=name,
        password=password,
        client="coldwatch demo",
    )
    signer = SignerIdentity(signed.name, signed.full_name, signed.role)
    for number, device in enumerate(config.devices, start=1):
        serial = f"DEMO-{number:03d}"
        model, maker = _MODELS.get(device.kind.value, ("DEMO sensor", "Demo Instruments"))
        await records.register(
            who, serial=serial, model=model, manufacturer=maker, reason=_REASON, now_us=now_us
        )
        await records.install(
            who, device.id, serial, reason=_REASON, now_us=now_us, at_us=now_us - 7 * DAY_US
        )
        due_in = 20 if device.id == DUE_SOON_DEVICE else 300
        await records.calibrate(
            signer,
            serial,
            performed_us=now_us - 8 * DAY_US,
            due_us=now_us + due_in * DAY_US,
            certificate=f"DEMO-CERT-{number:03d} (SIMULATED)",
            as_found="within tolerance (SIMULATED)",
            as_left="within tolerance, not adjusted (SIMULATED)",
            performed_by="Demo Metrology (SIMULATED)",
            passed=True,
            meaning=meaning,
            reason=_REASON,
            now_us=now_us,
        )
    return len(config.devices)
