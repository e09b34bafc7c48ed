"""byola.runtime: glibc's freed memory kept for reuse, and handed back during a pass that keeps data."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = """
import os
import torch
from byola.runtime import freed_memory_returned, keep_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def kept_after_free():  # MB still resident after a 256 MB block is written and freed
    before = rss_mb()
    block = torch.ones(64 * 2**20)
    del block
    return rss_mb() - before

assert keep_freed_memory()
with freed_memory_returned():
    inside = kept_after_free()
after = kept_after_free()
print(round(inside), round(after))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_returned_within_and_kept_again_after() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    inside, after = map(int, done.stdout.split())
    assert inside < 16, "a freed 256 MB block stays resident inside freed_memory_returned()"
    assert after > 200, "keep_freed_memory's settings are not restored after freed_memory_returned()"


def test_freed_memory_returned_changes_nothing_unless_memory_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from byola import runtime

    def no_libc(*args):
        raise AssertionError("the C library was asked to change its settings")

    monkeypatch.setattr(runtime, "_kept_block_bytes", None)  # keep_freed_memory not called (or not glibc)
    monkeypatch.setattr(runtime.ctypes, "CDLL", no_libc)
    with runtime.freed_memory_returned():
        pass
    assert runtime._kept_block_bytes is None
