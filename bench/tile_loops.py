"""Instructions per weight block in the int8 kernels' innermost loops, read from the built
library's machine code: a measure of a tile that no load on the machine can disturb, for the
tiers valgrind cannot run (its VEX decoder has no AVX-512) and machines without CPU counters.

    PYTHONPATH=. python bench/tile_loops.py --tier avx512
    PYTHONPATH=. python bench/tile_loops.py --tier avx2 --extra-flags=-mno-avxvnni

Each line is one innermost loop (a backward branch with no other loop inside) of a function
holding integer dot products: its instruction count, dot-product instructions (one per
activation row and 64-byte chunk for the AVX-512 tile, so 8 x rows a block), prefetches and
stack accesses (spills). Compare two trees by running it in each (e.g. a `git worktree` of the
older commit); the per-block counts times the blocks of a step (a 1B Q4_0 layer set: 1.2 M
blocks of 16 rows) give the step's instructions in the tile.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass

from flintlm.kernels import native

DOT_OPS = ("vpdpbusd", "{vex} vpdpbusd", "vpmaddubsw", "sdot", "udot")
INSTRUCTION = re.compile(r"^\s+([0-9a-f]+):\s+(\S+(?: vpdpbusd)?)\s*(.*)$")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:")


@dataclass(frozen=True)
class Loop:
    function: str
    start: int
    instructions: list[tuple[int, str, str]]  # (address, mnemonic, operands)

    def count(self, names: tuple[str, ...]) -> int:
        return sum(1 for _, op, _ in self.instructions if op.startswith(names))

    def summary(self) -> str:
        spills = sum(1 for _, _, args in self.instructions if "(%rsp)" in args or "(%rbp)" in args)
        return (f"{self.function[:36]:36s} {self.start:6x}: {len(self.instructions):4d} insns, "
                f"{self.count(DOT_OPS):3d} dot, {self.count(('prefetch',)):2d} prefetch, "
                f"{spills:2d} stack")


def functions(library: str) -> dict[str, list[tuple[int, str, str]]]:
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], check=True,
                          capture_output=True, text=True).stdout
    found: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        if match := FUNCTION.match(line):
            current = found.setdefault(match.group(1), [])
        elif match := INSTRUCTION.match(line):
            current.append((int(match.group(1), 16), match.group(2), match.group(3)))
    return found


def innermost_loops(name: str, code: list[tuple[int, str, str]]) -> list[Loop]:
    index = {address: i for i, (address, _, _) in enumerate(code)}
    spans = []
    for i, (address, op, args) in enumerate(code):
        target = re.match(r"([0-9a-f]+) <", args)
        if op.startswith("j") and target and int(target.group(1), 16) < address:
            start = int(target.group(1), 16)
            if start in index:
                spans.append((index[start], i))
    inner = [(s, e) for s, e in spans
             if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e for s2, e2 in spans)]
    return [Loop(name, code[s][0], code[s:e + 1]) for s, e in sorted(inner)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tier", default=native.default_tier())
    parser.add_argument("--extra-flags", default="",
                        help="compiler flags added to the tier's, comma-separated")
    parser.add_argument("--function", default="il_tile",
                        help="report functions whose name contains this (il_tile, int8_rows)")
    args = parser.parse_args()
    extra = tuple(flag for flag in args.extra_flags.split(",") if flag)
    library = native.load(args.tier, extra)
    if library is None:
        raise SystemExit("the kernels could not be built")
    print(f"{library.path} ({args.tier}, extra flags: {args.extra_flags or 'none'})")
    for name, code in functions(str(library.path)).items():
        if args.function in name:
            for loop in innermost_loops(name, code):
                if loop.count(DOT_OPS):
                    print(loop.summary())


if __name__ == "__main__":
    main()
