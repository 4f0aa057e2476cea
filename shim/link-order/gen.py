#!/usr/bin/env python3
"""Writes shim/link-order/hot.ld: a linker script that places the code a
serving orca-shim executes first and contiguous in the binary (see
shim/build.rs, which passes it to the linker for the orca-shim binary).

Why: a shim's RSS is mostly the code pages it has mapped, and the kernel maps
file pages in 64 KiB "fault-around" windows. With the code a shim runs
(~400 KiB: start-up, ttrpc, the task service, malloc/pthread/stdio of static
glibc) spread over the whole 1.3 MiB text, nearly every window gets mapped;
placed first and contiguous, only the hot windows do.

Why a linker script and not lld's --symbol-ordering-file: Rust symbol names
carry hashes (legacy `17h<hash>E`, v0 crate disambiguators `Cs<hash>_`) that
change whenever cargo's feature unification changes (`-p orca-shim` alone
vs. together with other packages gives other hashes), so an exact name list
goes stale silently. Section patterns can wildcard the hashes. The price is
that a pattern can also match other instances of the same generic function
(e.g. every `FnOnce::call_once`), which costs a little hot-region space.

Inputs (all from the same build):
  MAP    an lld -Map of the release orca-shim:
           ORCA_SHIM_MAP=/tmp/shim.map cargo build --release -p orca-shim --bins
  PHASE1 callgrind outputs (`--dump-instr=yes --compress-pos=no`) of shims up
         to the state the RSS is measured in (containers running); their code
         comes first.
  ALL    callgrind outputs of whole shim lifetimes (exec, pause, kill, delete,
         shutdown, foreground stdio, tty); this code follows.
  link-order/profile.sh makes both (valgrind, containerd, ctr).
  native.txt (next to this file): patterns for code a native shim runs that
         valgrind cannot show (posix_spawn's vfork child, vDSO set-up, lock
         slow paths); placed after PHASE1's code.

Usage: gen.py MAP PHASE1_FILE... -- ALL_FILE... > shim/link-order/hot.ld

A stale script is harmless: patterns that match nothing are ignored, and
whatever is not matched keeps its default place in .text.
"""
import bisect
import os
import re
import sys

LINE = re.compile(r'^\s*([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(\d+)\s(.*)$')
TEXT_OUT = ('.text', '.text.orca_hot')


def sections(map_path):
    """Input sections of the text output section: [vma, size, file, name]."""
    out, sec = [], None
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
        if sec not in TEXT_OUT or indent != 8 or ':(' not in rest:
            continue
        file, name = rest.rsplit(':(', 1)
        out.append([int(vma, 16), int(size, 16), file, name.rstrip(')')])
    out.sort()
    return out


def wildcard(sym):
    """A mangled Rust name with its build-dependent hashes made globs."""
    # LTO-promoted locals get a `.llvm.<number>` suffix; whether a function
    # gets one changes from build to build, so it is dropped here and
    # pattern() matches the name with and without it
    sym = re.sub(r'\.llvm\.[0-9]+$', '', sym)
    sym = re.sub(r'17h[0-9a-f]{16}E', '17h*E', sym)
    if sym.startswith('_R'):
        # crate disambiguators and back-references (offsets into the name,
        # which move when a disambiguator's length does)
        sym = re.sub(r'Cs[0-9A-Za-z]+_', 'Cs*_', sym)
        sym = re.sub(r'B[0-9A-Za-z]*_', 'B*_', sym)
        sym = re.sub(r'\*+', '*', sym)
    return sym


def pattern(file, name):
    for prefix in ('.text.unlikely.', '.text.hot.', '.text.startup.', '.text.'):
        if name.startswith(prefix):
            sym = name[len(prefix):]
            if sym.startswith(('_ZN', '_R')):
                # `.text.*` also covers an `unlikely.` prefix LTO may add or drop
                w = wildcard(sym)
                return '*(.text.*' + w + ' .text.*' + w + '.llvm.*)'
            break
    base = file.rsplit('/', 1)[-1]
    if base.endswith('.rcgu.o'):
        # Rust objects are named after hashes too; their other sections
        # (`.text.main`, `.text.__rust_alloc`, …) have unique names
        return '*(' + name + ')' if name != '.text' else None
    m = re.match(r'^(.*\.a)\((.*)\)$', base)
    if m:
        # lld names archive members `archive:member` in scripts
        base = m.group(1) + ':' + m.group(2)
    if re.search(r'[\s()*?\[\]\\"]', base + name):
        return None
    return '*' + base + '(' + name + ')'


def executed(files):
    out = set()
    for path in files:
        for line in open(path):
            if line.startswith('0x'):
                out.add(int(line.split(None, 1)[0], 16))
    return out


def main():
    args = sys.argv[1:]
    if '--' not in args or len(args) < 4:
        sys.exit(__doc__)
    cut = args.index('--')
    secs = sections(args[0])
    starts = [s[0] for s in secs]

    def hot(files):
        found = set()
        for ip in executed(files):
            i = bisect.bisect_right(starts, ip) - 1
            if i >= 0 and secs[i][0] <= ip < secs[i][0] + secs[i][1]:
                found.add(i)
        return found

    first = hot(args[1:cut])
    rest = hot(args[cut + 1:]) - first
    native = []
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native.txt')) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith('#'):
                native.append(line)
    seen, lines, total = set(), [], [0, 0]
    for n, group in enumerate((first, rest)):
        if n == 1:
            for p in native:
                if p not in seen:
                    seen.add(p)
                    lines.append('    ' + p)
        for i in sorted(group):
            p = pattern(secs[i][2], secs[i][3])
            if p and p not in seen:
                seen.add(p)
                lines.append('    ' + p)
                total[n] += secs[i][1]
    print('/* Generated by shim/link-order/gen.py from a callgrind profile: the')
    print('   text a shim executes, up to "containers running" first. */')
    print('SECTIONS')
    print('{')
    print('  .text.orca_hot :')
    print('  {')
    print('\n'.join(lines))
    print('  }')
    print('}')
    print('INSERT BEFORE .text;')
    print(f'{len(lines)} patterns; hot text {total[0] // 1024} KiB + {total[1] // 1024} KiB',
          file=sys.stderr)


if __name__ == '__main__':
    main()
