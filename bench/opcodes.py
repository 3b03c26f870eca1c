"""
Where two cases of bench/instructions.py differ, function by function: the
bytecodes each function runs per request (counted by a trace function,
after a warm-up run), for case A, for case B and A - B, largest first.
Instructions follow bytecodes closely on this interpreter (about 60 a
bytecode on the request path), so this shows where an instruction count's
difference comes from.

    .venv/bin/python bench/opcodes.py pass pass-nocache [--requests N] [--top K]
"""

import argparse
import collections
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import instructions  # noqa: E402


def count(case: str, n: int) -> dict:
    """
    @return: C{{(file, first line, function): bytecodes per request}} for
        C{n} requests of C{case} (after a run of as many unmeasured).
    """
    instructions.runCase(case, n)
    counts = collections.Counter()

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            name = code.co_filename.rsplit("/cachingproxy/", 1)[-1].rsplit("site-packages/", 1)[-1]
            counts[(name, code.co_firstlineno, code.co_name)] += 1
        return tracer

    sys.settrace(tracer)
    try:
        instructions.runCase(case, n)
    finally:
        sys.settrace(None)
    return {key: value / n for key, value in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    a, b = count(args.a, args.requests), count(args.b, args.requests)
    print("bytecodes per request: %s %.0f, %s %.0f" % (
        args.a, sum(a.values()), args.b, sum(b.values())))
    rows = sorted(((a.get(k, 0) - b.get(k, 0), k) for k in set(a) | set(b)),
                  key=lambda row: -abs(row[0]))
    print("%8s %8s %8s  function" % (args.a, args.b, "A - B"))
    for difference, key in rows[:args.top]:
        if abs(difference) < 0.5:
            break
        print("%8.1f %8.1f %+8.1f  %s:%d %s" % ((a.get(key, 0), b.get(key, 0), difference) + key))


if __name__ == "__main__":
    main()
