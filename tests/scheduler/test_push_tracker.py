"""PushTracker (exchanged/push.py): which notifications of the streaming watch ask for a cycle."""

from __future__ import annotations

from datetime import UTC, datetime

from exchanged.push import PushTracker

ALICE = "alice@example.test"


class Nudges:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def nudge(self, mailbox: str, reason: str = "push") -> bool:
        self.seen.append((mailbox, reason))
        return True


def tracker() -> tuple[PushTracker, Nudges]:
    nudges = Nudges()
    return PushTracker(nudges, wall=lambda: datetime(2026, 12, 6, tzinfo=UTC)), nudges


async def test_a_change_asks_for_a_cycle() -> None:
    push, nudges = tracker()
    push.live(ALICE)
    push.changed(ALICE)
    assert nudges.seen == [(ALICE, "push")]


async def test_the_first_subscription_needs_no_cycle_a_gap_does() -> None:
    push, nudges = tracker()
    push.live(ALICE)  # the start-up schedule gives the first cycle
    assert nudges.seen == []
    push.live(ALICE)  # live again after a broken stream: what happened in between is unknown
    assert nudges.seen == [(ALICE, "push")]


async def test_retries_against_a_refused_stream_ask_for_no_cycle() -> None:
    """Exchange refuses the stream (its connection limit): each retry subscribes again (live) and is
    refused (lost). The mailbox is polled meanwhile; a retry is no gap. Before, every retry nudged
    every mailbox of the group."""
    push, nudges = tracker()
    for _ in range(5):
        push.live(ALICE)
        push.lost(ALICE, "polled: the server refuses more streaming connections")
    assert nudges.seen == []
    push.live(ALICE)  # a slot is free: pushed again, and the scheduled cycles read until vouched
    assert nudges.seen == []
    assert push.vouch(ALICE, "scheduled", full=False) is False
