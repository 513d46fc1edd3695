"""How PSA rows read in Outlook: the subjects and bodies every connector gives its records.

One place, so that the sql and the Autotask connector feed the engine alike (docs/SYNC_RULES.md
"What the items look like"):

* a service call: ``Service call: <company>: <first line of the description>``;
* a to-do: ``<action type>: <first line of the description>`` (the task list shows what to do,
  not only "Call"), the whole description in the body and, below it, ``Company: <name>``.

Empty parts are left out; a to-do with neither action type nor description is ``To-do``.
"""

from __future__ import annotations


def first_line(text: str) -> str:
    """The first line of ``text`` with its surrounding blanks removed ("" for blank text)."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def service_call_subject(company: str | None, description: str) -> str:
    parts = ["Service call", (company or "").strip(), first_line(description)]
    return ": ".join(p for p in parts if p)


def todo_subject(action_type: str | None, description: str) -> str:
    """``<action type>: <first line>``; the first line alone repeats no action type it starts with
    (``Call: Call Ann`` reads fine, ``Call: Call`` does not)."""
    action, line = (action_type or "").strip(), first_line(description)
    if action and line and line.casefold() != action.casefold():
        return f"{action}: {line}"
    return action or line or "To-do"


def todo_body(description: str, company: str | None) -> str:
    """The description, then ``Company: <name>`` when the to-do belongs to a company."""
    name = (company or "").strip()
    if not name:
        return description
    return f"{description.rstrip()}\n\nCompany: {name}" if description.strip() else f"Company: {name}"


__all__ = ["first_line", "service_call_subject", "todo_body", "todo_subject"]
