"""
Freed memory kept for reuse (v2d.memory): checked in a child interpreter, since it
changes malloc for the whole process. The proof is the kernel's count of page faults:
a second 64 MiB buffer after the first was freed faults its pages in again by default,
and not with the memory retained.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from v2d.memory import retain_freed_memory
retained = retain_freed_memory(int(sys.argv[1]))
def faults_of_a_64_mib_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = bytearray(64 << 20)      # zero-filled: every page is touched
    buf[::4096] = b"x" * len(buf[::4096])
    del buf
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_64_mib_buffer()
print(json.dumps({"retained": retained, "again": faults_of_a_64_mib_buffer()}))
"""


def _probe(limit: int) -> dict:
    command = [sys.executable, "-c", PROBE, str(limit)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc knobs")
def test_retained_memory_spares_the_page_faults_of_the_next_big_buffer():
    default = _probe(0)
    retained = _probe(512 << 20)
    if not retained["retained"]:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert default["retained"] is False
    assert default["again"] > 10_000, "64 MiB freshly mapped: about 16,000 faults"
    assert retained["again"] < 1_000, "the freed 64 MiB was reused, already faulted in"


TRIM_PROBE = """
import json, sys
from v2d.memory import retain_freed_memory, trim_freed_memory
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS"))
limit = int(sys.argv[1])
retained = retain_freed_memory(limit)
base = rss()
big, small = [], []
for _ in range(20):
    big.append(bytearray(32 << 20))  # zero-filled: resident
    small.append(bytearray(200))     # a small object above each: holes once the big ones go
in_flight = big[-1]                  # the last one is still in use, at the top of the heap
del big
after_free = rss() - base - len(in_flight)
trim_freed_memory(limit)
after_trim = rss() - base - len(in_flight)
print(json.dumps({"retained": retained, "after_free": after_free, "after_trim": after_trim}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_trim_holds_retained_memory_to_its_limit_after_concurrent_big_buffers():
    limit = 64 << 20
    command = [sys.executable, "-c", TRIM_PROBE, str(limit)]
    out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    if not out["retained"]:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert out["after_free"] > 4 * limit, "the heap alone keeps the holes: the bound is not held"
    assert out["after_trim"] <= limit + (8 << 20), out


def test_freed_memory_is_trimmed_after_big_buffers_and_every_few_seconds():
    from twisted.internet.task import Clock

    from v2d.memory import SWEEP_EVERY, TRIM_AFTER, TRIM_DELAY, FreedMemoryTrim

    clock = Clock()
    trims: list = []
    trim = FreedMemoryTrim(7, clock.callLater, trim=trims.append)
    trim.freed(TRIM_AFTER - 1)
    clock.advance(SWEEP_EVERY * 3)
    assert trims == [], "not started, and nothing big freed"
    trim.freed(TRIM_AFTER)
    trim.freed(TRIM_AFTER)
    clock.advance(TRIM_DELAY)
    assert trims == [7], "one trim for a burst, keeping the limit"
    trim.start()
    trim.start()
    clock.advance(SWEEP_EVERY)
    clock.advance(SWEEP_EVERY)
    assert trims == [7, 7, 7], "one sweep every SWEEP_EVERY seconds"
    trim.freed(TRIM_AFTER)
    trim.stop()
    clock.advance(SWEEP_EVERY * 3)
    assert trims == [7, 7, 7] and clock.getDelayedCalls() == []
