"""A separate writer process for the crash and multi-process tests.

Usage: writer_proc.py DATA_DIR CONVERSATION COUNT [TAG]
Appends COUNT events one at a time and prints each acknowledged id as soon as it is durable.
COUNT 0 means: append until killed.
"""

from __future__ import annotations

import sys

from sidecar.log import EventStore


def main() -> None:
    data_dir, cid, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tag = sys.argv[4] if len(sys.argv) > 4 else "w"
    with EventStore(data_dir) as store:
        n = 0
        while count == 0 or n < count:
            n += 1
            ack = store.append({"conversation_id": cid, "type": "test.write", "agent_id": tag, "data": {"n": n}})
            sys.stdout.write(f"{ack.id} {ack.seq}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
