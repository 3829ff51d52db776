"""A keeper in a process of its own, for the kill -9 tests.

Usage: keeper_proc.py DATA_DIR RETAIN_BYTES COMPRESS
Runs one pass of the archive keeper (tasks carried forward first, as the daemon does); after
each file-system change it prints the step's name and waits for a line on stdin, so the test
can kill it exactly there.
"""

from __future__ import annotations

import functools
import sys

from sidecar.log import EventStore
from sidecar.log.keeper import ArchiveKeeper, RetentionPolicy
from sidecar.tasks.retention import carry_forward


def main() -> None:
    data_dir, retain_bytes, compress = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"

    def step(name: str) -> None:
        sys.stdout.write(name + "\n")
        sys.stdout.flush()
        sys.stdin.readline()

    with EventStore(data_dir) as store:
        policy = RetentionPolicy(retain_bytes=retain_bytes, compress=compress)
        keeper = ArchiveKeeper(store.paths, policy, before_drop=functools.partial(carry_forward, store), step=step)
        keeper.run_once()
    step("done")


if __name__ == "__main__":
    main()
