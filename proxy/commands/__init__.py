"""The ledger's commands, one module each: `report`, `reprice`, `import` (Claude Code's
transcripts), `copy-ledger`, `calls` and `keys` (consumer keys). Each module has
`add_parser(sub, add_common)` and `run(args, config)`; `proxy.cli` wires them in
`COMMANDS` order."""

from __future__ import annotations

from proxy.commands import calls, copy_ledger, import_claude_code, keys, report, reprice

__all__ = ["COMMANDS"]

COMMANDS = (report, reprice, import_claude_code, copy_ledger, calls, keys)
