"""The notices' outbox, as both backends keep it (`tb_notice`, see schema.py): the SQL, in
`?` placeholders (the PostgreSQL backend turns them into `$n`)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CLAIM", "COLUMNS", "FAILED", "LIST", "OFFER", "RENEW", "SENT", "notice_json"]

COLUMNS = ("id", "notice_key", "sink", "budget", "window_id", "window_start", "kind",
           "threshold", "body", "created_at", "claimed_by", "claimed_at", "attempts",
           "last_error", "sent_at")
_COLS = ", ".join(COLUMNS)

# A new notice: the row is added (claimed by the replica adding it, which then sends it)
# or, already there, left alone (RETURNING nothing: another replica or an earlier run has it).
OFFER = ("INSERT INTO tb_notice (notice_key, sink, budget, window_id, window_start, kind, "
         "threshold, body, created_at, claimed_by, claimed_at, sent_at) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
         f"ON CONFLICT (notice_key) DO NOTHING RETURNING {_COLS}")
# Rows not sent yet that are this replica's, unclaimed, or claimed by a replica that has not
# touched them since `stale_before`: claimed (or the claim renewed) by this replica.
CLAIM = (f"UPDATE tb_notice SET claimed_by = ?, claimed_at = ? WHERE sent_at IS NULL AND "
         f"(claimed_by = ? OR claimed_by IS NULL OR claimed_at < ?) RETURNING {_COLS}")
# Right before each send: the claim renewed, if it is still this replica's (else another
# replica took the row, its claim having lapsed: it sends it, this one does not).
RENEW = ("UPDATE tb_notice SET claimed_at = ? WHERE id = ? AND claimed_by = ? "
         "AND sent_at IS NULL RETURNING id")
SENT = ("UPDATE tb_notice SET sent_at = ?, last_error = NULL WHERE id = ? AND claimed_by = ? "
        "AND sent_at IS NULL")
FAILED = ("UPDATE tb_notice SET attempts = attempts + 1, last_error = ?, claimed_at = ? "
          "WHERE id = ? AND claimed_by = ? AND sent_at IS NULL")
LIST = f"SELECT {_COLS} FROM tb_notice ORDER BY id DESC LIMIT ?"


def notice_json(row: Any) -> dict[str, Any]:
    """A stored notice as `/api/notices` shows it: its facts, the sink, and its delivery."""
    return {**json.loads(row["body"]), "id": row["id"], "sink": row["sink"] or None,
            "created_at": row["created_at"], "sent_at": row["sent_at"],
            "attempts": row["attempts"], "last_error": row["last_error"]}
