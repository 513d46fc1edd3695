"""What a write's result means, in pure functions (h11's way: no I/O, tables of input and output).

The runner sends a batch of planned writes (``engine.actions``) to the PSA or to Exchange and gets
one result per write: the record or item as written, an ``ItemError``, or None (a delete). Each
function here turns one (action, result) pair into an :class:`Effect`: which mapping to keep,
which to drop, the journal entry, the count, the item error, what the cycle wrote. The runner
carries the effects out (one state batch per call) and keeps retries, batching and awaits.

Rules that live here and nowhere else:

* a delete answered "not found" (``GONE_CODES``) is done, not an error;
* a write the server answered without the row/item is an error (``no_result``), never a success;
* a created Exchange item is not re-read: its mapping carries the hash of what was sent
  (``model.unconfirmed_hash``) until the item is first synced;
* a mapping's PSA hash is the one the PSA returned in this cycle, if it wrote the row;
* a PSA update that moves the pair out of the window drops the mapping instead of keeping it; a
  PSA create that replaces a row a user deleted drops the old row's mapping.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingOf
from dataclasses import dataclass, replace
from typing import Literal

from exchanged.engine.actions import (
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    action_fields,
    title,
)
from exchanged.model import (
    ExchangeItem,
    FolderKind,
    ItemError,
    Kind,
    Mapping,
    PsaRecord,
    fields_to_write,
    payload_hash,
    unconfirmed_hash,
)
from exchanged.ports import PsaWrite

GONE_CODES = frozenset({"ErrorItemNotFound", "not_found"})  # a delete of what is gone is done


@dataclass(frozen=True, slots=True)
class Journal:
    """One journal entry to write (the runner adds the time, the user and the cycle id)."""

    side: str  # "exchange" | "psa"
    action: str  # create | update | delete | adopt
    kind: Kind
    key: str
    item_id: str | None
    fields: tuple[str, ...] = ()
    reason: str = ""
    subject: str = ""  # what `exchangectl history` calls the item (deletions too: from the plan)


@dataclass(frozen=True, slots=True)
class Effect:
    """What one write's result means. ``error`` set: nothing else applies."""

    keep: Mapping | None = None  # upsert this mapping (first)
    drop: tuple[str, ...] = ()  # then drop these mappings (psa keys)
    journal: Journal | None = None
    count: Literal["exported", "imported", "updated", "deleted", "adopted"] | None = None
    error: ItemError | None = None  # the write failed for this item
    error_key: str = ""  # the key the item error is recorded under
    psa_hash: tuple[str, str] | None = None  # (psa_key, hash of the row the PSA returned)
    wrote: ExchangeItem | None = None  # an Exchange item as this cycle wrote it
    mirror_delete: str | None = None  # an item id gone from the folder's mirror


def failed(error: ItemError, key: str) -> Effect:
    return Effect(error=error, error_key=key)


# --- the PSA -------------------------------------------------------------------------------------


def psa_write(action: PsaCreate | PsaUpdate | PsaDelete, resource: str | None) -> PsaWrite:
    """The ``PsaWrite`` that carries out ``action`` (``resource``: the user's, for creates)."""
    if isinstance(action, PsaCreate):
        return PsaWrite("create", Kind.IMPORTED, None, action.payload, exchange_key=action.exchange_key,
                        resource=resource)
    if isinstance(action, PsaUpdate):
        return PsaWrite("update", action.kind, action.psa_key, action.payload, action.fields,
                        exchange_key=action.exchange_key)
    return PsaWrite("delete", action.kind, action.psa_key, None, exchange_key=action.exchange_key)


def psa_result(action: PsaCreate | PsaUpdate | PsaDelete, result: PsaRecord | ItemError | None,
               mappings: MappingOf[str, Mapping]) -> Effect:
    """One PSA write's result; ``mappings``: the user's mappings as the cycle has them now."""
    key = action.exchange_key if isinstance(action, PsaCreate) else action.psa_key
    gone = isinstance(action, PsaDelete) and isinstance(result, ItemError) and result.code in GONE_CODES
    if isinstance(result, ItemError) and not gone:
        return failed(result, key or "?")
    if isinstance(action, PsaDelete):
        mapping = mappings.get(action.psa_key)
        return Effect(drop=(action.forget,) if action.forget else (), count="deleted",
                      journal=Journal("psa", "delete", action.kind, action.psa_key,
                                      mapping.item_id if mapping else None, (), action.reason,
                                      action.subject))
    if not isinstance(result, PsaRecord):
        return failed(ItemError(key or "?", "no_result", "the PSA answered the write without the row"),
                      key or "?")
    new_hash = payload_hash(result.payload)
    keep: Mapping | None = None
    drop: tuple[str, ...] = ()
    if isinstance(action, PsaUpdate) and action.leaves_window:
        drop = (action.psa_key,) if action.psa_key in mappings else ()
    else:
        keep = replace(action.mapping, psa_key=result.psa_key, psa_hash=new_hash)
    if isinstance(action, PsaCreate) and action.replaces and action.replaces != result.psa_key:
        drop = (*drop, action.replaces)
    return Effect(keep=keep, drop=drop, psa_hash=(result.psa_key, new_hash),
                  count="imported" if isinstance(action, PsaCreate) else "updated",
                  journal=Journal("psa", action.verb, action.kind, result.psa_key, action.mapping.item_id,
                                  action_fields(action), action.reason, title(result.payload)))


# --- Exchange ------------------------------------------------------------------------------------


def exchange_mapping(planned: Mapping, item: ExchangeItem, psa_hashes: MappingOf[str, str], *,
                     exchange_hash: str | None = None) -> Mapping:
    """The mapping after an Exchange write: the item as returned, the PSA hash as last written."""
    return replace(planned, item_id=item.item_id, change_key=item.change_key,
                   exchange_hash=exchange_hash or payload_hash(item.payload),
                   psa_hash=psa_hashes.get(planned.psa_key, planned.psa_hash))


def created(action: ExchangeCreate, result: ExchangeItem | ItemError,
            psa_hashes: MappingOf[str, str]) -> Effect:
    """A CreateItem result."""
    if isinstance(result, ItemError):
        return failed(result, action.psa_key)
    # CreateItem is not re-read: the hash is of what was sent until the item is first synced, and
    # that sync takes the item as sent while its change key is still the create's
    mapping = exchange_mapping(action.mapping, result, psa_hashes,
                               exchange_hash=unconfirmed_hash(result.payload))
    return Effect(keep=mapping, wrote=result, count="exported",
                  journal=Journal("exchange", "create", action.kind, action.psa_key, result.item_id,
                                  action_fields(action), action.reason, title(action.payload)))


def adopted(action: ExchangeCreate, found: ExchangeItem, folder: FolderKind,
            psa_hashes: MappingOf[str, str]) -> tuple[Effect, ExchangeUpdate | None]:
    """An item to be created that Exchange already has (found by its PSA key: a lost reply, or a
    create since the sync): adopted, and overwritten from the PSA when its values differ."""
    mapping = exchange_mapping(action.mapping, found, psa_hashes)
    fix = None
    if found.unreadable or found.payload != action.payload:
        fix = ExchangeUpdate(
            action.kind, action.psa_key, folder, found.item_id, found.change_key, action.payload,
            fields_to_write(found, action.payload),
            "found in Exchange by its PSA key with other values: overwritten from the PSA",
            replace(mapping, exchange_hash=payload_hash(action.payload)))
    return Effect(keep=mapping, count="adopted",
                  journal=Journal("exchange", "adopt", action.kind, action.psa_key, found.item_id, (),
                                  "found in Exchange by its PSA key: adopted", title(action.payload))), fix


def updated(action: ExchangeUpdate, result: ExchangeItem | ItemError,
            psa_hashes: MappingOf[str, str]) -> Effect:
    """An UpdateItem result."""
    if isinstance(result, ItemError):
        return failed(result, action.psa_key)
    return Effect(keep=exchange_mapping(action.mapping, result, psa_hashes), wrote=result, count="updated",
                  journal=Journal("exchange", "update", action.kind, action.psa_key, result.item_id,
                                  action_fields(action), action.reason, title(action.payload)))


def deleted(action: ExchangeDelete, result: ItemError | None) -> Effect:
    """A DeleteItem result (None: deleted)."""
    if result is not None and result.code not in GONE_CODES:
        return failed(result, action.key)
    # the mirror follows SyncFolderItems only (an item unknown to the sync state would never be
    # reported deleted); a delete is the one write safe to mirror at once
    return Effect(drop=(action.forget,) if action.forget else (), mirror_delete=action.item_id,
                  count="deleted",
                  journal=Journal("exchange", "delete", action.kind, action.key, action.item_id, (),
                                  action.reason, action.subject))


__all__ = ["GONE_CODES", "Effect", "Journal", "adopted", "created", "deleted", "exchange_mapping",
           "failed", "psa_result", "psa_write", "updated"]
