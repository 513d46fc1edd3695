"""Model-level test helpers over the Autotask test server's data, shaped like ``MemoryPsa``'s.

End-to-end tests written against ``MemoryPsa`` (``add_resource``, ``add``, ``edit``, ``remove``,
``assign``) can drive the Autotask test server through ``AutotaskPsaData`` instead: it turns model
payloads into Autotask rows (what a user would type in the web UI) and back into psa keys. What the
connector then reads is what the mapping of docs/AUTOTASK.md makes of those rows: service call
subjects are ``Service call: <company>: <first line of the description>`` (the company is named after
the payload's subject, minus that prefix), a to-do's subject is the name of its action type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from exchanged.model import Appointment, Contact, Kind, Payload, Task, make_psa_key, split_psa_key

from .store import Store, format_time

ENTITY_OF_KIND = {
    Kind.APPOINTMENT: "Appointments",
    Kind.IMPORTED: "Appointments",
    Kind.SERVICE_CALL: "ServiceCalls",
    Kind.TODO: "CompanyToDos",
    Kind.CONTACT: "Contacts",
}
SERVICE_CALL_PREFIX = "Service call: "


def _t(value: datetime | None) -> str | None:
    return None if value is None else format_time(value.astimezone(UTC))


class AutotaskPsaData:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.payloads: dict[str, Payload] = {}  # what each key was last given as

    # -- resources and companies ------------------------------------------------------------------

    def add_resource(self, psa_resource: str, email: str, name: str = "", is_active: bool = True) -> None:
        first, _, last = (name or email.split("@")[0]).partition(" ")
        self.store.put(
            "Resources",
            {
                "id": int(psa_resource),
                "email": email,
                "firstName": first,
                "lastName": last or first,
                "isActive": is_active,
                "userName": email,
            },
        )
        self.store.save()

    def company(self, name: str, owner: str | None = None) -> int:
        """The id of the company of that name (created when missing; owned by ``owner``)."""
        for row in self.store.rows("Companies"):
            if row["companyName"] == name and (owner is None or row["ownerResourceID"] == int(owner)):
                return int(row["id"])
        owner_id = int(owner) if owner is not None else self._any_resource()
        row = self.store.put(
            "Companies", {"companyName": name, "companyType": 1, "ownerResourceID": owner_id, "phone": "0"}
        )
        self.store.save()
        return int(row["id"])

    def _any_resource(self) -> int:
        rows = self.store.rows("Resources")
        if not rows:
            raise ValueError("add a resource first")
        return int(rows[0]["id"])

    # -- rows -------------------------------------------------------------------------------------

    def add(self, kind: Kind, payload: Payload, resources: Iterable[str]) -> str:
        """A new PSA-owned row for these resources; its psa key."""
        who = [str(r) for r in resources]
        if not who:
            raise ValueError("a row needs at least one resource")
        if kind is Kind.APPOINTMENT and isinstance(payload, Appointment):
            row = self.store.put("Appointments", {**self._appointment(payload), "resourceID": int(who[0])})
        elif kind is Kind.SERVICE_CALL and isinstance(payload, Appointment):
            row = self.store.put("ServiceCalls", self._service_call(payload))
            self.assign(make_psa_key(kind, row["id"]), who)
        elif kind is Kind.TODO and isinstance(payload, Task):
            row = self.store.put(
                "CompanyToDos",
                {
                    **self._todo(payload),
                    "companyID": self.company("To-dos"),
                    "assignedToResourceID": int(who[0]),
                },
            )
        elif kind is Kind.CONTACT and isinstance(payload, Contact):
            row = self.store.put(
                "Contacts",
                {
                    **self._contact(payload),
                    "isActive": 1,
                    "companyID": self.company(payload.company or "Contacts", who[0]),
                },
            )
        else:
            raise ValueError(f"cannot add a {kind.value} row from a {type(payload).__name__}")
        self.store.save()
        key = make_psa_key(kind, row["id"])
        self.payloads[key] = payload
        return key

    def edit(self, psa_key: str, **values: Any) -> Payload:
        kind, raw = split_psa_key(psa_key)
        payload = replace(self.payloads[psa_key], **values)  # type: ignore[type-var]
        fields = {
            Kind.APPOINTMENT: self._appointment,
            Kind.IMPORTED: self._appointment,
            Kind.SERVICE_CALL: self._service_call,
            Kind.TODO: self._todo,
            Kind.CONTACT: self._contact,
        }[kind](payload)  # type: ignore[operator]
        if kind is Kind.SERVICE_CALL:
            fields.pop("companyID", None)
        self.store.edit(ENTITY_OF_KIND[kind], int(raw), **fields)
        self.payloads[psa_key] = payload
        return payload

    def remove(self, psa_key: str) -> None:
        kind, raw = split_psa_key(psa_key)
        self.store.remove(ENTITY_OF_KIND[kind], int(raw))
        self.payloads.pop(psa_key, None)

    def assign(self, psa_key: str, resources: Iterable[str]) -> None:
        """Service calls: the assigned resources, through one ticket link each (both chains are
        covered by the connector; the test server has the task chain too)."""
        kind, raw = split_psa_key(psa_key)
        if kind is not Kind.SERVICE_CALL:
            raise ValueError("only service calls have several resources")
        call = int(raw)
        for link in [r for r in self.store.rows("ServiceCallTickets") if r["serviceCallID"] == call]:
            for res in [
                r
                for r in self.store.rows("ServiceCallTicketResources")
                if r["serviceCallTicketID"] == link["id"]
            ]:
                self.store.remove("ServiceCallTicketResources", int(res["id"]))
            self.store.remove("ServiceCallTickets", int(link["id"]))
        link_row = self.store.put("ServiceCallTickets", {"serviceCallID": call, "ticketID": call})
        for r in resources:
            self.store.put(
                "ServiceCallTicketResources", {"serviceCallTicketID": link_row["id"], "resourceID": int(r)}
            )
        self.store.save()

    # -- payload -> fields --------------------------------------------------------------------------

    @staticmethod
    def _appointment(p: Appointment) -> dict[str, Any]:
        return {
            "title": p.subject,
            "description": p.body,
            "startDateTime": _t(p.start),
            "endDateTime": _t(p.end),
        }

    def _service_call(self, p: Appointment) -> dict[str, Any]:
        line = p.body.strip().splitlines()[0].strip() if p.body.strip() else ""
        name = (
            p.subject.removeprefix(SERVICE_CALL_PREFIX).removesuffix(f": {line}" if line else "") or "Service"
        )
        return {
            "companyID": self.company(name),
            "description": p.body,
            "startDateTime": _t(p.start),
            "endDateTime": _t(p.end),
        }

    def action_type(self, name: str) -> int:
        """The id of the to-do action type of that name (created when missing)."""
        for row in self.store.rows("ActionTypes"):
            if row["name"] == name:
                return int(row["id"])
        row = self.store.put(
            "ActionTypes", {"name": name[:32], "view": 1, "isActive": True, "isSystemActionType": False}
        )
        return int(row["id"])

    def _todo(self, p: Task) -> dict[str, Any]:
        """The subject is the action type's name (as the connector reads it), the body the description."""
        return {
            "actionType": self.action_type(p.subject or "To-do"),
            "activityDescription": p.body,
            "startDateTime": _t(p.start or p.due),
            "endDateTime": _t(p.due or p.start),
            "completedDate": _t(p.completed),
        }

    @staticmethod
    def _contact(p: Contact) -> dict[str, Any]:
        return {
            "firstName": p.given_name,
            "lastName": p.surname,
            "title": p.job_title,
            "emailAddress": p.email,
            "phone": p.business_phone,
            "mobilePhone": p.mobile_phone,
        }
