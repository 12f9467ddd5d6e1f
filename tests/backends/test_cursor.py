"""Export cursors in the ledger, on both backends: a sink seen first starts at the ledger's
end, reads rows after its cursor in order, keeps its place across a reopen, and never sees
an id handed out again after retention empties the table."""

from __future__ import annotations

from typing import Any

from proxy.backends import open_backend
from tests.factories import make_record


def row(call_id: str, started_at: str = "2026-11-20T10:00:00.000Z") -> tuple[Any, ...]:
    return make_record(call_id=call_id, started_at=started_at).to_row()


async def ids(cursor: Any, limit: int = 100) -> tuple[list[str], Any]:
    got = await cursor.rows(limit)
    return [r[0] for _, r in got], got[-1][0] if got else None


async def test_a_cursor_starts_at_the_end_reads_in_order_and_keeps_its_place(
        target: str) -> None:
    backend = open_backend(target)
    await backend.open()
    try:
        await backend.write([row("before0"), row("before1")])
        cursor = backend.export_cursor("hook")
        assert await cursor.acquire()
        assert await ids(cursor) == ([], None)  # history is not this sink's
        await backend.write([row(f"n{i}") for i in range(5)])
        got, last = await ids(cursor, 3)
        assert got == ["n0", "n1", "n2"]
        await cursor.advance(last)
        assert (await ids(cursor))[0] == ["n3", "n4"]
        await cursor.release()
        other = backend.export_cursor("other")  # a sink of its own, at the end
        assert await other.acquire() and await ids(other) == ([], None)
        await other.release()
    finally:
        await backend.aclose()
    backend = open_backend(target)
    await backend.open()
    try:
        cursor = backend.export_cursor("hook")
        assert await cursor.acquire()
        assert (await ids(cursor))[0] == ["n3", "n4"]  # not n0..n2 again
        await cursor.release()
    finally:
        await backend.aclose()


async def test_ids_are_never_handed_out_again_after_retention_empties_the_ledger(
        target: str) -> None:
    backend = open_backend(target)
    await backend.open()
    cursor = backend.export_cursor("hook")
    try:
        assert await cursor.acquire()
        await backend.write([row(f"old{i}", "2026-01-01T10:00:00.000Z") for i in range(4)])
        _, last = await ids(cursor)
        await cursor.advance(last)
        await backend.purge("2026-02-01T00:00:00.000Z")
        await backend.write([row("new")])
        assert (await ids(cursor))[0] == ["new"]
    finally:
        await cursor.release()
        await backend.aclose()
