#!/usr/bin/env python3
"""Where a snaprtcd process's CPU goes, by component, from a `perf record --call-graph dwarf`
profile (as `BENCH_PERF=DIR bench/signaling/by_process.sh` writes them).

    bench/signaling/perf_split.py DIR/run1-a.data [µs-per-exchange]

Each sample goes to the innermost frame on its stack that names a component below. Kernel,
libc and socket frames (tokio::io, tokio::net, mio::net) name none, so a read or write counts
for the code that made it, and the kernel's switch path for the park that entered it. With the
process's CPU per exchange (by_process.sh prints it), the shares are also printed in µs.
docs/BENCHMARKS.md ("Where the fleet's extra cost goes") has what it gave.
"""

import collections
import re
import subprocess
import sys

# First match wins, so the more specific names come first.
COMPONENTS = [
    ("the redis crate", r"\bredis::|combine::"),
    ("snaprtcd's backplane code", r"snaprtcd::signaling::(redis|backplane)"),
    ("hub and SignalR codec", r"snaprtcd::signaling::(hub|signalr)::"),
    ("WebSocket connections", r"tungstenite|snaprtcd::signaling::ws::|snaprtcd::http"),
    (
        "wake-ups: tokio's scheduler, park, IO driver, channels, timers",
        r"tokio::runtime::(scheduler|task|park|time|io::driver|context)|tokio::sync::|tokio::time::"
        r"|mio::poll|mio::sys::unix::(selector|waker)|\bepoll_wait\b",
    ),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$")


def samples(path):
    script = subprocess.run(
        ["perf", "script", "-i", path], capture_output=True, text=True, check=True
    ).stdout
    stack = []
    for line in script.splitlines():
        frame = FRAME.match(line)
        if frame:
            stack.append(frame.group(1))
        elif stack:
            yield stack
            stack = []
    if stack:
        yield stack


def component(stack):
    for symbol in stack:
        for name, pattern in COMPILED:
            if pattern.search(symbol):
                return name
    return "other"


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    per_exchange = float(sys.argv[2]) if len(sys.argv) == 3 else None
    counts = collections.Counter(component(s) for s in samples(sys.argv[1]))
    total = sum(counts.values())
    if total == 0:
        sys.exit(f"{sys.argv[1]}: no samples with a call graph")
    print(f"{sys.argv[1]}: {total} samples")
    for name, n in counts.most_common():
        share = n / total
        us = f"  {share * per_exchange:6.1f} µs" if per_exchange else ""
        print(f"  {100 * share:5.1f} %{us}  {name}")


if __name__ == "__main__":
    main()
