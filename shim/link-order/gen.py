#!/usr/bin/env python3
"""Writes shim/link-order/symbols.txt: the text sections a serving orca-shim
actually executes, for lld's --symbol-ordering-file (see shim/build.rs).

Why: a shim's RSS is mostly the code pages it has mapped, and the kernel maps
file pages in 64 KiB "fault-around" windows. With the hot code (~400 KiB:
startup, ttrpc, the task service, malloc/pthread/syscall wrappers of static
glibc) spread over the whole 1.3 MiB text, every window gets mapped; placed
first and contiguous, only the hot windows do.

Inputs:
  MAP   an lld -Map of the release orca-shim, e.g.
        CARGO_TARGET_DIR=/tmp/tgt CARGO_PROFILE_RELEASE_STRIP=false \
          cargo rustc --release -p orca-shim --bin orca-shim -- \
          -C link-arg=-Wl,-Map=/tmp/shim.map
  IPS   sampled instruction addresses of running shims of that same build
        ("COUNT HEXADDR" lines), e.g. while `orca-bench --only shim` runs:
          perf record -e cpu-clock -F 40000 -a -o p.data -- sleep 35
          perf script -i p.data -F ip,dso | grep orca-shim | awk '{print $1}' \
            | sort | uniq -c > ips.txt
        (the /tmp/tgt binary has the same layout as target/release's: only
        the symbol table differs.)

Usage: gen.py MAP IPS > shim/link-order/symbols.txt

A stale list is harmless: names that no longer exist are ignored by the
linker, and whatever is not listed keeps its default place after the list.
"""
import bisect
import re
import sys

LINE = re.compile(r'^\s*([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(\d+)\s(.*)$')


def sections(map_path):
    out, sec, cur = [], None, None
    for line in open(map_path):
        m = LINE.match(line)
        if not m:
            continue
        vma, _, size, _, rest = m.groups()
        indent = len(rest) - len(rest.lstrip(' '))
        rest = rest.strip()
        if indent == 0:
            sec = rest
            continue
        if sec != '.text':
            continue
        if indent == 8:
            cur = [int(vma, 16), int(size, 16), rest, []]
            out.append(cur)
        elif cur is not None:
            cur[3].append(rest)
    out.sort()
    return out


def symbol(sec):
    """A linker symbol defined in an input section."""
    name = sec[2].rsplit(':(', 1)[-1].rstrip(')')
    for prefix in ('.text.unlikely.', '.text.hot.', '.text.startup.', '.text.'):
        if name.startswith(prefix) and '(' not in sec[2].rsplit(':(', 1)[0][-1:]:
            cand = name[len(prefix):]
            if cand and not cand.startswith(('avx', 'sse', 'evex')):
                return cand
    # C objects (one .text per archive member): any symbol listed under it.
    for s in sec[3]:
        if ' ' not in s and '(' not in s:
            return s
    return None


def main():
    secs = sections(sys.argv[1])
    starts = [s[0] for s in secs]
    hot = set()
    for line in open(sys.argv[2]):
        parts = line.split()
        if len(parts) != 2:
            continue
        ip = int(parts[1], 16)
        i = bisect.bisect_right(starts, ip) - 1
        if i >= 0 and secs[i][0] <= ip < secs[i][0] + secs[i][1]:
            hot.add(i)
    seen = set()
    total = 0
    for i in sorted(hot):
        name = symbol(secs[i])
        if name and name not in seen:
            seen.add(name)
            total += secs[i][1]
            print(name)
    print(f'{len(seen)} sections, {total // 1024} KiB', file=sys.stderr)


if __name__ == '__main__':
    main()
