"""
How much CPU this machine gives N busy processes at once.

    python bench/spin.py N SECONDS

Starts N processes that each run a pure-Python busy loop for SECONDS of
wall time, and prints one line: the CPUs they got in all (their CPU
seconds over SECONDS) and the share of the machine's CPU time the
hypervisor took for others meanwhile ("steal" in /proc/stat, 0 where it
is not reported).

run_defaults.sh runs it with N=1 and N=2 beside its workers rows: on a
virtual machine whose host is busy two processes may get far less than
twice what one gets, and no server's two workers can scale better than
two busy loops do.
"""

import os
import sys
import time


def _steal():
    """
    @return: (steal ticks, all ticks) of the machine so far.
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def _spin(seconds, out):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10000):
            pass
    os.write(out, repr(time.process_time()).encode("ascii"))


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: spin.py N SECONDS")
    count, seconds = int(argv[1]), float(argv[2])
    if count < 1 or seconds <= 0:
        sys.exit("spin.py: N must be at least 1 and SECONDS above 0")
    steal0, all0 = _steal()
    children = []
    for _ in range(count):
        readEnd, writeEnd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(readEnd)
            try:
                _spin(seconds, writeEnd)
            finally:
                os._exit(0)
        os.close(writeEnd)
        children.append((pid, readEnd))
    used = 0.0
    for pid, readEnd in children:
        os.waitpid(pid, 0)
        used += float(os.read(readEnd, 64) or b"0")
        os.close(readEnd)
    steal1, all1 = _steal()
    stolen = (steal1 - steal0) / (all1 - all0) if all1 > all0 else 0.0
    print(f"{used / seconds:.3f} {100 * stolen:.1f}")


if __name__ == "__main__":
    main(sys.argv)
