#!/usr/bin/env python3
"""The guest's downtime as the guest's console shows it.

Follows the serial console logs given (a guest's log on its source and on its
target host: a migrated guest goes on writing to the target's) and stamps, by
the host's clock, when each `KVMESH-TICK` line (printed every 10 ms by the
test guest booted with `kvmesh.tick`) appears. On SIGTERM it prints the
longest gap between two consecutive ticks, in ms: the time the guest could
not print, whoever paused it. A log that shrinks was truncated and is read
again from its start.

    scripts/console-gaps.py LOG... &   (then kill -TERM it)
"""
import os
import signal
import sys
import time

paths = sys.argv[1:]
offsets = {p: None for p in paths}
partial = {p: b"" for p in paths}
arrivals = []
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
# Start from the logs' current ends: only what is printed from now counts.
for p in paths:
    offsets[p] = os.path.getsize(p) if os.path.exists(p) else 0

while not stop:
    now = time.monotonic()
    for p in paths:
        try:
            size = os.path.getsize(p)
        except OSError:
            continue
        if size < offsets[p]:
            offsets[p], partial[p] = 0, b""
        if size == offsets[p]:
            continue
        with open(p, "rb") as f:
            f.seek(offsets[p])
            data = partial[p] + f.read(size - offsets[p])
        offsets[p] = size
        *lines, partial[p] = data.split(b"\n")
        arrivals.extend(now for line in lines if b"KVMESH-TICK" in line)
        if os.environ.get("GAPS_TRACE") and any(b"KVMESH-TICK" in line for line in lines):
            print("%.3f %s %d" % (time.time(), p, sum(b"KVMESH-TICK" in line for line in lines)), file=sys.stderr)
    time.sleep(0.002)

arrivals.sort()
gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
print(int(max(gaps) * 1000) if gaps else "")
