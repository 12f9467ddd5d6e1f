"""The live feed: nothing is built while nobody watches; each subscriber has a bounded
queue that loses its oldest events, counted; a fleet relays events while a watcher is
anywhere, and a watcher arriving elsewhere gets this replica's calls in flight."""

from __future__ import annotations

import asyncio
import json

from proxy.record import LiveCall
from proxy.sinks.feed import Broadcaster
from tests.factories import make_record


def live(call_id: str) -> LiveCall:
    return LiveCall(call_id, "2026-11-20T10:00:00.000Z", "openai", "chat", True, "ana", None,
                    None, model="gpt-4o")


def drain(sub: object) -> list[tuple[str, dict[str, object]]]:
    queue = sub.queue  # type: ignore[attr-defined]
    out = []
    while not queue.empty():
        kind, data = queue.get_nowait()
        out.append((kind, json.loads(data)))
    return out


async def test_nobody_watching_nothing_published() -> None:
    feed = Broadcaster()
    relayed: list[tuple[str, str]] = []
    feed.relay = lambda kind, data: relayed.append((kind, data))
    assert not feed.active
    feed.started(live("c1"))
    feed.observe(make_record(call_id="c1"))
    assert relayed == [] and feed.local_watchers == 0


async def test_a_subscriber_sees_started_progress_finished_in_order() -> None:
    feed = Broadcaster()
    announced: list[asyncio.Future[None]] = []

    def on_watch() -> asyncio.Future[None]:  # the fleet's: done once the others know
        announced.append(asyncio.get_running_loop().create_future())
        return announced[-1]
    feed.on_watch = on_watch
    sub = feed.subscribe()
    assert len(announced) == 1 and sub.announced is announced[0]
    assert feed.active and feed.local_watchers == 1
    call = live("c1")
    feed.started(call)
    call.output_tokens = 5
    feed.progress(call)
    feed.observe(make_record(call_id="c1", output_tokens=10))
    got = drain(sub)
    assert [k for k, _ in got] == ["call_started", "call_progress", "call_finished"]
    assert got[1][1]["output_tokens"] == 5 and got[2][1]["output_tokens"] == 10
    assert got[2][1]["call_id"] == "c1" and "usage" not in got[1][1]
    feed.unsubscribe(sub)
    assert not feed.active


async def test_a_slow_subscriber_loses_its_oldest_events_counted() -> None:
    feed = Broadcaster(queue_size=3)
    slow, fresh = feed.subscribe(), feed.subscribe()
    for i in range(5):
        feed.started(live(f"c{i}"))
    assert [e["call_id"] for _, e in drain(slow)] == ["c2", "c3", "c4"]
    assert slow.dropped == 2
    feed.unsubscribe(slow)
    assert feed.dropped == 2  # counted once it leaves
    feed.unsubscribe(fresh)
    assert feed.dropped == 4
    await feed.aclose()


async def test_events_are_relayed_only_while_a_watcher_is_elsewhere() -> None:
    feed = Broadcaster()
    relayed: list[str] = []
    feed.relay = lambda kind, data: relayed.append(json.loads(data)["call_id"])
    sub = feed.subscribe()
    feed.started(live("local-only"))
    feed.remote_watchers = 1  # the heartbeat: a watcher on another replica
    feed.started(live("both"))
    feed.publish("call_started", live("here").to_json(), relay=False)
    assert relayed == ["both"]
    assert [e["call_id"] for _, e in drain(sub)] == ["local-only", "both", "here"]


async def test_events_from_other_replicas_are_delivered_as_they_came() -> None:
    feed = Broadcaster()
    sub = feed.subscribe()
    feed.deliver("call_finished", '{"call_id": "far"}')
    assert drain(sub) == [("call_finished", {"call_id": "far"})]


async def test_a_watcher_elsewhere_gets_the_calls_in_flight_here_at_once() -> None:
    feed = Broadcaster()
    relayed: list[tuple[str, str]] = []
    feed.relay = lambda kind, data: relayed.append((kind, json.loads(data)["call_id"]))
    feed.calls = {"a": live("a"), "b": live("b")}
    assert not feed.active
    feed.watched_elsewhere(grace=30.0)
    assert sorted(relayed) == [("call_started", "a"), ("call_started", "b")]
    assert feed.active and feed.remote_active  # until the heartbeat confirms it
    feed.started(live("c"))
    assert relayed[-1] == ("call_started", "c")
    feed.watched_elsewhere(grace=-1.0)  # the grace ran out, nobody confirmed it
    assert not feed.active
