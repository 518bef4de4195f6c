"""CPU and wall time of one durable append on this disk, four ways.

    python3 docs/bench/fsync_cost.py [DIRECTORY]   (default: target/)

What the WAL's design choices rest on (docs/benchmarks.md, issue 15):
appending and `fdatasync` (the file grows, so the inode is written too),
writing over preallocated zeros and `fdatasync` (what the WAL does), and
`O_DIRECT` with `fdatasync` or with `O_DSYNC`. Each way runs 3,000 times,
twice; CPU is this process's user + system time.
"""

import mmap
import os
import resource
import sys
import time


def run(directory, name, flags, mode, n=3000):
    path = os.path.join(directory, "fsync-cost.log")
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    if mode != "append":
        os.write(fd, b"\0" * (16 << 20))
        os.fdatasync(fd)
    os.close(fd)
    fd = os.open(path, os.O_WRONLY | flags)
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    block.write(b"x" * 4096)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    for i in range(n):
        if mode == "direct":
            os.pwritev(fd, [block], (i // 10) * 4096)
            if not flags & os.O_DSYNC:
                os.fdatasync(fd)
        elif mode == "append":
            os.write(fd, b"x" * 300)
            os.fdatasync(fd)
        else:
            os.pwrite(fd, b"x" * 300, i * 300)
            os.fdatasync(fd)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    os.close(fd)
    os.remove(path)
    print(f"{name:28}: {wall / n * 1e6:4.0f} us wall, {cpu / n * 1e6:4.0f} us CPU per durable append")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    for _ in range(2):
        run(directory, "append + fdatasync", 0, "append")
        run(directory, "preallocated + fdatasync", 0, "pwrite")
        run(directory, "O_DIRECT + fdatasync", os.O_DIRECT, "direct")
        run(directory, "O_DIRECT | O_DSYNC", os.O_DIRECT | os.O_DSYNC, "direct")
