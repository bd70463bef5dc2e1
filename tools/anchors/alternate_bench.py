#!/usr/bin/env python3
"""Alternates `mscope bench` runs of several builds (or kernel variants) and prints each case's
median over the rounds: a before/after comparison that a loaded machine disturbs less than one
run of each, since every build sees the same load, round after round.

    tools/anchors/alternate_bench.py --filter attention/ --rounds 5 \\
        main=/tmp/mscope-main panels=target/release/mscope \\
        "faer=MSCOPE_CPU_ATTENTION=faer target/release/mscope"

Each `LABEL=COMMAND` is a binary, optionally preceded by environment assignments. Each round runs
every command once (`bench --backend cpu --suite kernels --filter F --repeat R`, once per
`--filter`: the option repeats, e.g. `--filter layer_norm/ --filter rms_norm/`); the table gives,
per case and command, the median of the rounds' medians, the median fraction of the roofline the
bench printed, and the ratio to the first command.
"""

import argparse
import os
import re
import shlex
import statistics
import subprocess

UNITS = {"µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def millis(text):
    value, unit = text.strip().split()
    return float(value) * UNITS[unit]


def run(command, args):
    """One bench run of `command` per filter: {case: (median ms, roofline %)}."""
    words = shlex.split(command)
    env = dict(os.environ)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    cases = {}
    for name in args.filter:
        bench = words + ["bench", "--backend", "cpu", "--suite", "kernels", "--filter", name,
                         "--repeat", str(args.repeat), "--threads", str(args.threads)]
        if args.variant:
            bench += ["--variant", args.variant]
        if args.quick:
            bench.append("--quick")
        out = subprocess.run(bench, env=env, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            # | case | backend | variant | shape | median | min – max | clock | rate | roofline |
            if len(cells) == 9 and name in cells[0] and cells[1] == "cpu":
                roofline = float(cells[8].split("%")[0]) if "%" in cells[8] else float("nan")
                cases[cells[0]] = (millis(cells[4]), roofline)
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="+", help="LABEL=COMMAND")
    parser.add_argument("--filter", required=True, action="append",
                        help="bench's --filter; repeat it for several (one bench run each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--variant", help="bench's --variant for every command (e.g. 8: the "
                        "packed GEMM on every shape, not only where the backend picks it)")
    parser.add_argument("--quick", action="store_true",
                        help="bench's --quick sizes: probes and row counts / 8 (a loaded machine)")
    args = parser.parse_args()
    commands = [c.split("=", 1) for c in args.commands]
    results = {label: [] for label, _ in commands}
    for _ in range(args.rounds):
        for label, command in commands:
            results[label].append(run(command, args))
    load = open("/proc/loadavg").read().split()[:3]
    print(f"# {args.rounds} rounds, load average after: {' '.join(load)}")
    # Builds may bench different cases (a case added or renamed): compare the ones every build
    # ran in every round, and name the rest.
    seen = {label: set.intersection(*map(set, rounds)) for label, rounds in results.items()}
    common = set.intersection(*seen.values())
    for label, cases in seen.items():
        if cases - common:
            print(f"# only in {label}: {', '.join(sorted(cases - common))}")
    print("| case | build | median ms (rounds) | median | roofline | first / this |")
    print("|---|---|---|---:|---:|---:|")
    first = commands[0][0]
    for case in sorted(common):
        base = statistics.median(r[case][0] for r in results[first])
        for label, _ in commands:
            times = [r[case][0] for r in results[label]]
            roof = statistics.median(r[case][1] for r in results[label])
            med = statistics.median(times)
            listed = " / ".join(f"{t:.2f}" for t in times)
            print(f"| {case} | {label} | {listed} | {med:.2f} | {roof:.1f}% | {base / med:.2f} |")


if __name__ == "__main__":
    main()
