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
