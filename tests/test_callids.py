"""Call ids (proxy/callids.py): random, never repeated, a forked child's its own."""

from __future__ import annotations

import os
import re

from proxy.callids import _CallIds


def test_call_ids_are_random_24_hex_digits_and_never_repeat_across_draws() -> None:
    ids = _CallIds()
    drawn = [ids() for _ in range(3 * _CallIds._BATCH + 7)]  # several draws from the OS
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    other = _CallIds()  # another instance draws its own bytes
    assert not {other() for _ in range(100)} & set(drawn)


def test_a_forked_child_draws_its_own_call_ids() -> None:
    ids = _CallIds()
    ids()  # the parent holds a drawn batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(ids() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    parent = "".join(ids() for _ in range(10))
    assert len(child) == len(parent) == 240
    assert child != parent  # not the rest of the parent's batch
