"""The daemon's process-wide memory settings: giving glibc's free memory back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from asd_edge.runtime import MemoryRelease


class TestMemoryRelease:
    def test_release_free_memory_gives_freed_heap_back(self) -> None:
        """Memory freed in the middle of a thread's heap stays resident (a live block
        above it keeps the top from being trimmed) until ``release_free_memory``."""
        code = textwrap.dedent(
            """
            import os, threading
            from asd_edge.runtime import release_free_memory, tune_malloc
            tune_malloc()
            def rss_mb():
                pages = int(open("/proc/self/statm").read().split()[1])
                return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
            kept = []
            def churn():  # a worker thread's arena, as the clip writer's
                blocks = [bytearray(b"x" * 200_000) for _ in range(300)]
                kept.append(blocks.pop())
                del blocks
            worker = threading.Thread(target=churn)
            worker.start()
            worker.join()
            before = rss_mb()
            assert release_free_memory()
            print(round(before - rss_mb(), 1))
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        assert result.returncode == 0, result.stderr
        assert float(result.stdout) > 40.0  # of the 60 MB freed

    def test_memory_release_after_work_and_at_its_interval(self) -> None:
        """``MemoryRelease.poll`` releases at the first poll after ``after_work`` (from any
        thread) and once ``every_s`` has passed since the last release; never otherwise."""
        calls: list[int] = []
        memory = MemoryRelease(lambda: calls.append(1), every_s=60.0)
        assert not memory.poll(0.0) and not memory.poll(59.9)  # the first poll starts it
        assert memory.poll(60.0) and not memory.poll(61.0)
        worker = threading.Thread(target=memory.after_work)
        worker.start()
        worker.join()
        assert memory.poll(62.0) and not memory.poll(63.0)  # once per piece of work
        assert not memory.poll(121.9) and memory.poll(122.0)  # 60 s after the last one
        assert len(calls) == memory.releases == 3
