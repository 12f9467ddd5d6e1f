"""The recorder's and the ledger's FIFO: asyncio.Queue's meaning for one consumer."""

from __future__ import annotations

import asyncio

import pytest

from proxy.mailbox import Mailbox


async def test_items_come_out_in_order_and_a_full_box_refuses() -> None:
    box: Mailbox[int] = Mailbox(2)
    box.put_nowait(1)
    box.put_nowait(2)
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(3)
    assert box.qsize() == 2
    assert [await box.get(), box.get_nowait()] == [1, 2]
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()


async def test_zero_means_unbounded_as_asyncio_queue() -> None:
    box: Mailbox[int] = Mailbox(0)
    for i in range(10_000):
        box.put_nowait(i)
    assert box.qsize() == 10_000


async def test_a_waiting_get_is_woken_by_a_put() -> None:
    box: Mailbox[str] = Mailbox(4)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)  # the getter is parked on its future
    assert not getter.done()
    box.put_nowait("a")
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_a_cancelled_get_takes_nothing_and_the_next_get_has_the_item() -> None:
    box: Mailbox[str] = Mailbox(4)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(box.get(), 0.01)  # as the ledger writer's retry wait does
    box.put_nowait("kept")
    assert await asyncio.wait_for(box.get(), 1) == "kept"


async def test_put_waits_for_room() -> None:
    box: Mailbox[int] = Mailbox(1)
    box.put_nowait(1)
    putter = asyncio.ensure_future(box.put(2))
    await asyncio.sleep(0)
    assert not putter.done() and box.qsize() == 1
    assert box.get_nowait() == 1
    await asyncio.wait_for(putter, 1)
    assert box.get_nowait() == 2


async def test_join_waits_for_every_item_to_be_done() -> None:
    box: Mailbox[int] = Mailbox(8)
    await box.join()  # nothing put: returns at once
    box.put_nowait(1)
    box.put_nowait(2)
    joiner = asyncio.ensure_future(box.join())
    box.get_nowait()
    box.task_done()
    await asyncio.sleep(0)
    assert not joiner.done()  # one item still unfinished
    box.get_nowait()
    box.task_done()
    await asyncio.wait_for(joiner, 1)
    box.put_nowait(3)  # a second round: join waits again
    second = asyncio.ensure_future(box.join())
    await asyncio.sleep(0)
    assert not second.done()
    box.get_nowait()
    box.task_done()
    await asyncio.wait_for(second, 1)
    with pytest.raises(ValueError):
        box.task_done()


async def test_take_is_a_loop_of_get_nowait_stopping_at_the_end_marker() -> None:
    box: Mailbox[int | None] = Mailbox(8)
    assert box.take(5, None) == []  # nothing waiting: nothing, no wait
    for i in (1, 2, 3):
        box.put_nowait(i)
    assert box.take(2, None) == [1, 2]  # at most `limit`, in order
    box.put_nowait(None)  # an end marker, then an item put after it
    box.put_nowait(4)
    assert box.take(10, None) == [3, None]  # up to the marker, taken last
    assert box.qsize() == 1 and box.get_nowait() == 4  # what came after it stays queued
    box.task_done(5)  # the five items taken, done at once
    await asyncio.wait_for(box.join(), 1)
    with pytest.raises(ValueError):
        box.task_done(1)


async def test_take_makes_room_for_a_waiting_put() -> None:
    box: Mailbox[int] = Mailbox(1)
    box.put_nowait(1)
    putter = asyncio.ensure_future(box.put(2))
    await asyncio.sleep(0)
    assert not putter.done()
    assert box.take(10, -1) == [1]
    await asyncio.wait_for(putter, 1)
    assert box.take(10, -1) == [2]
