"""The speed guard: does the socket path still run at the speed docs/performance.md shows?

    python bench/guard.py                # about 20 s; exit 1 when a figure falls below its floor
    python bench/guard.py --self-check   # the same against a daemon slowed 2x: it must trip

``./dev test`` runs it after the test suites, and ``./dev bench --guard`` alone. Every figure
is a ratio to a peer measured in the same run (the plain fsync loop, a minimal echo server),
so a faster or slower machine moves both sides together. The floors in ``FLOORS`` sit at
0.6 of what the guard measured on the committed code: noise (about 20% here) does not reach them, while a
change that makes the path 2x slower halves the ratio and does. A miss is measured again,
twice; only a figure below its floor all three times fails, since a real regression is
there every time and a noisy moment is not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_appends import append_request, plain_loop
from bench_daemon import Daemon, EchoServer, Spawned, clean_env, event_loop, load, placed, request, round_trips

# name -> (floor, what this guard measured on the code of docs/performance.md's run, on a
# quiet machine); see docs/performance.md, "The speed guard"
FLOORS: dict[str, tuple[float, float]] = {
    "16x8 appends / plain loop at 16 threads": (0.6 * 7.5, 7.5),
    "plain loop p50 / one client's append p50": (0.6 * 0.37, 0.37),
    "echo round trip / sys.health round trip": (0.6 * 0.52, 0.52),
}
ATTEMPTS = 3


@dataclass
class Figures:
    values: dict[str, float]

    def misses(self) -> list[str]:
        return [name for name, (floor, _) in FLOORS.items() if self.values[name] < floor]


def measure(daemon: Spawned, echo: EchoServer, tmp: Path) -> Figures:
    plain = tmp / "plain.jsonl"
    make = append_request(False)
    load(daemon.socket, 2, 1, 100, make)  # warm: files created, code paths hot
    plain_loop(plain, 2, 50)
    took, lat = load(daemon.socket, 16, 8, 1500, make)
    pipelined = len(lat) / took
    base16 = plain_loop(plain, 16, 200).rate
    _, one = load(daemon.socket, 1, 1, 1500, make)
    plain1 = plain_loop(plain, 1, 1500)
    health = request(0, "sys.health", {})
    with placed(0, 0, daemon.proc.pid, echo.proc.pid):  # one core: the round trip is all work, no wake-ups
        echo_rtt = round_trips(echo.socket, lambda i: health, 2000)
        rtt = round_trips(daemon.socket, lambda i: health, 2000)
    return Figures(
        {
            "16x8 appends / plain loop at 16 threads": pipelined / base16,
            "plain loop p50 / one client's append p50": plain1.p50 / statistics.median(one),
            "echo round trip / sys.health round trip": echo_rtt / rtt,
        }
    )


class SlowedDaemon(Daemon):
    """The daemon with its hot paths made to take twice as long (``bench/slowed.py``)."""

    def __init__(self, data_dir: Path, run_dir: Path) -> None:
        self.socket = str(run_dir / "s.sock")
        argv = [sys.executable, str(Path(__file__).with_name("slowed.py"))]
        argv += ["serve", "--data-dir", str(data_dir), "--socket", self.socket]
        Spawned.__init__(self, argv, run_dir, clean_env())


def guard(make_daemon: Callable[[Path, Path], Daemon], report: Callable[[str], None]) -> bool:
    """Measure up to ATTEMPTS times; True when every figure reached its floor at least once."""
    with tempfile.TemporaryDirectory(prefix="sidecar-guard-") as name:
        tmp = Path(name)
        with make_daemon(tmp / "data", tmp / "run") as d, EchoServer(tmp / "run", event_loop()) as echo:
            pending = set(FLOORS)
            for attempt in range(1, ATTEMPTS + 1):
                got = measure(d, echo, tmp)
                for what in sorted(pending):
                    floor, shown = FLOORS[what]
                    value = got.values[what]
                    verdict = "ok" if value >= floor else "BELOW FLOOR"
                    report(
                        f"guard {attempt}: {what} = {value:.2f} (floor {floor:.2f}, run shown {shown:.2f}): {verdict}"
                    )
                pending &= set(got.misses())
                if not pending:
                    return True
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-check", action="store_true", help="show that a daemon slowed 2x trips the guard")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.self_check:
        if guard(SlowedDaemon, say):
            say("guard: FAILED its self-check: a daemon slowed 2x passed")
            return 1
        say("guard: self-check passed: the daemon slowed 2x tripped it")
        return 0
    if guard(Daemon, say):
        say("guard: the socket path is at speed")
        return 0
    say("guard: the socket path is slower than the committed run allows (see bench/guard.py and docs/performance.md)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
