"""The entities the Autotask test server knows: fields, required and read-only ones, routes.

Only the entities and fields the ``autotask`` connector touches (plus the ones the API requires
on create) are modelled; the names and the rules (required, read-only, which verbs exist at the
root and which only through a parent URL) follow the vendor's Swagger as summarised in
``reference/autotask-rest-api.md`` section 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# field types: "int", "str", "datetime", "bool", "float"
INT, STR, DT, BOOL, FLOAT = "int", "str", "datetime", "bool", "float"


@dataclass(frozen=True)
class Child:
    """A write route through the parent: ``/{parent}/{pid}/{segment}`` sets ``parent_field``."""

    parent: str
    segment: str
    parent_field: str
    verbs: frozenset[str]


@dataclass(frozen=True)
class EntitySpec:
    name: str
    fields: dict[str, str]
    required: frozenset[str] = frozenset()
    read_only: frozenset[str] = frozenset({"id"})
    root_verbs: frozenset[str] = frozenset()  # writes allowed at /{name}: POST PATCH PUT DELETE
    child: Child | None = None
    created_field: str | None = None
    modified_field: str | None = None
    lengths: dict[str, int] = field(default_factory=dict)

    def canonical(self, name: str) -> str | None:
        """The schema's spelling of a field name given in any case (the API ignores case)."""
        return _LOWER[self.name].get(name.lower())


def _spec(name: str, fields: dict[str, str], **kw: object) -> EntitySpec:
    return EntitySpec(name, {"id": INT, **fields}, **kw)  # type: ignore[arg-type]


ALL_WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})

ENTITIES: dict[str, EntitySpec] = {
    s.name: s
    for s in [
        _spec(
            "Resources",
            {
                "email": STR,
                "firstName": STR,
                "lastName": STR,
                "isActive": BOOL,
                "userName": STR,
                "resourceType": STR,
                "userType": INT,
                "licenseType": INT,
            },
            root_verbs=frozenset({"PATCH", "PUT"}),
            required=frozenset({"email", "firstName", "lastName", "isActive", "userName"}),
        ),
        _spec(
            "ActionTypes",
            {"name": STR, "isActive": BOOL, "isSystemActionType": BOOL, "view": INT},
            required=frozenset({"name", "view"}),
            root_verbs=frozenset({"POST", "PATCH", "PUT"}),
            lengths={"name": 32},
        ),
        _spec(
            "Companies",
            {
                "companyName": STR,
                "companyType": INT,
                "ownerResourceID": INT,
                "phone": STR,
                "isActive": BOOL,
                "createDate": DT,
                "lastActivityDate": DT,
                "lastTrackedModifiedDateTime": DT,
            },
            required=frozenset({"companyName", "companyType", "ownerResourceID", "phone"}),
            read_only=frozenset({"id", "createDate", "lastActivityDate", "lastTrackedModifiedDateTime"}),
            root_verbs=frozenset({"POST", "PATCH", "PUT"}),
            created_field="createDate",
            modified_field="lastTrackedModifiedDateTime",
            lengths={"companyName": 100, "phone": 25},
        ),
        _spec(
            "Contacts",
            {
                "companyID": INT,
                "firstName": STR,
                "lastName": STR,
                "emailAddress": STR,
                "phone": STR,
                "mobilePhone": STR,
                "title": STR,
                "isActive": INT,
                "createDate": DT,
                "lastModifiedDate": DT,
                "lastActivityDate": DT,
            },
            required=frozenset({"companyID", "firstName", "lastName", "isActive"}),
            read_only=frozenset({"id", "createDate", "lastModifiedDate", "lastActivityDate"}),
            child=Child("Companies", "Contacts", "companyID", ALL_WRITES),
            created_field="createDate",
            modified_field="lastModifiedDate",
        ),
        _spec(
            "Opportunities",
            {
                "companyID": INT,
                "contactID": INT,
                "ownerResourceID": INT,
                "title": STR,
                "status": INT,
                "stage": INT,
                "amount": FLOAT,
                "cost": FLOAT,
                "probability": INT,
                "projectedCloseDate": DT,
                "startDate": DT,
                "useQuoteTotals": BOOL,
                "createDate": DT,
                "lastActivity": DT,
            },
            required=frozenset({"companyID", "ownerResourceID", "title", "status"}),
            read_only=frozenset({"id", "createDate", "lastActivity"}),
            root_verbs=frozenset({"POST", "PATCH", "PUT"}),
            created_field="createDate",
            modified_field="lastActivity",
            lengths={"title": 128},
        ),
        _spec(
            "Appointments",
            {
                "resourceID": INT,
                "title": STR,
                "description": STR,
                "startDateTime": DT,
                "endDateTime": DT,
                "createDateTime": DT,
                "creatorResourceID": INT,
                "updateDateTime": DT,
            },
            required=frozenset({"title", "resourceID", "startDateTime", "endDateTime"}),
            read_only=frozenset({"id", "createDateTime", "creatorResourceID", "updateDateTime"}),
            root_verbs=ALL_WRITES,
            created_field="createDateTime",
            modified_field="updateDateTime",
            lengths={"title": 256, "description": 8000},
        ),
        _spec(
            "ServiceCalls",
            {
                "companyID": INT,
                "companyLocationID": INT,
                "description": STR,
                "startDateTime": DT,
                "endDateTime": DT,
                "duration": FLOAT,
                "status": INT,
                "isComplete": INT,
                "canceledDateTime": DT,
                "canceledByResourceID": INT,
                "cancelationNoticeHours": FLOAT,
                "createDateTime": DT,
                "creatorResourceID": INT,
                "lastModifiedDateTime": DT,
            },
            required=frozenset({"companyID", "startDateTime", "endDateTime"}),
            read_only=frozenset({"id", "createDateTime", "creatorResourceID", "lastModifiedDateTime"}),
            root_verbs=ALL_WRITES,
            created_field="createDateTime",
            modified_field="lastModifiedDateTime",
        ),
        _spec(
            "ServiceCallTickets",
            {"serviceCallID": INT, "ticketID": INT},
            required=frozenset({"serviceCallID", "ticketID"}),
            child=Child("ServiceCalls", "Tickets", "serviceCallID", frozenset({"POST", "DELETE"})),
        ),
        _spec(
            "ServiceCallTicketResources",
            {"serviceCallTicketID": INT, "resourceID": INT, "roleID": INT},
            required=frozenset({"serviceCallTicketID", "resourceID"}),
            child=Child(
                "ServiceCallTickets", "Resources", "serviceCallTicketID", frozenset({"POST", "DELETE"})
            ),
        ),
        _spec(
            "ServiceCallTasks",
            {"serviceCallID": INT, "taskID": INT},
            required=frozenset({"serviceCallID", "taskID"}),
            child=Child("ServiceCalls", "Tasks", "serviceCallID", frozenset({"POST", "DELETE"})),
        ),
        _spec(
            "ServiceCallTaskResources",
            {"serviceCallTaskID": INT, "resourceID": INT, "roleID": INT},
            required=frozenset({"serviceCallTaskID", "resourceID"}),
            child=Child("ServiceCallTasks", "Resources", "serviceCallTaskID", frozenset({"POST", "DELETE"})),
        ),
        _spec(
            "CompanyToDos",
            {
                "companyID": INT,
                "contactID": INT,
                "assignedToResourceID": INT,
                "actionType": INT,
                "activityDescription": STR,
                "startDateTime": DT,
                "endDateTime": DT,
                "completedDate": DT,
                "opportunityID": INT,
                "ticketID": INT,
                "createDateTime": DT,
                "creatorResourceID": INT,
                "lastModifiedDate": DT,
            },
            required=frozenset(
                {"actionType", "companyID", "assignedToResourceID", "startDateTime", "endDateTime"}
            ),
            read_only=frozenset({"id", "createDateTime", "creatorResourceID", "lastModifiedDate"}),
            child=Child("Companies", "ToDos", "companyID", ALL_WRITES),
            created_field="createDateTime",
            modified_field="lastModifiedDate",
            lengths={"activityDescription": 32000},
        ),
    ]
}

_LOWER: dict[str, dict[str, str]] = {
    name: {f.lower(): f for f in spec.fields} for name, spec in ENTITIES.items()
}
ENTITY_BY_LOWER: dict[str, str] = {name.lower(): name for name in ENTITIES}
# (parent entity lower, child segment lower) -> child entity name
CHILD_ROUTES: dict[tuple[str, str], str] = {
    (s.child.parent.lower(), s.child.segment.lower()): s.name for s in ENTITIES.values() if s.child
}
