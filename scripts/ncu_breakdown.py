#!/usr/bin/env python3
"""Where a profiled run's GPU time goes, by kernel: reads what `ncu --csv --metrics
gpu__time_duration.sum …` printed (the program's own output mixed in is skipped) and prints a
markdown table, the kernels grouped by name (template arguments and parameters dropped; cuBLASLt's
own kernels as one group per name), largest total first, with the sum of all of them.

    ncu --profile-from-start off --clock-control none --csv --metrics gpu__time_duration.sum \\
        flashgpt bench train --device cuda --profile-step … > run.csv
    scripts/ncu_breakdown.py run.csv [--top 30]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict

UNITS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}


def short_name(full):
    """'void ns::flash_forward_tc_kernel<64, bf16>(Args)' -> 'flash_forward_tc_kernel'."""
    name = full.strip()
    depth, out = 0, []
    for ch in name:  # drop template arguments, however nested
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    name = "".join(out).split("(")[0].strip()
    name = re.sub(r"^(void|static)\s+", "", name)
    return name.split("::")[-1] or full


def read_rows(lines):
    header = None
    for row in csv.reader(line for line in lines if line.startswith('"')):
        if header is None:
            if "Kernel Name" in row and "Metric Value" in row:
                header = {h: i for i, h in enumerate(row)}
            continue
        if len(row) < len(header) or row[header["Metric Name"]] != "gpu__time_duration.sum":
            continue
        unit = row[header["Metric Unit"]].strip()
        if unit not in UNITS:
            raise SystemExit(f"ncu_breakdown: unknown time unit '{unit}'")
        value = float(row[header["Metric Value"]].replace(",", ""))
        yield row[header["Kernel Name"]], value * UNITS[unit]
    if header is None:
        raise SystemExit("ncu_breakdown: no ncu CSV header (\"Kernel Name\" … \"Metric Value\") in the input")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu's --csv output")
    ap.add_argument("--top", type=int, default=30, help="rows shown; the rest are summed into one")
    a = ap.parse_args()
    with open(a.csv, encoding="utf-8", errors="replace") as f:
        rows = list(read_rows(f))
    if not rows:
        raise SystemExit("ncu_breakdown: no kernel was profiled (was the capture range empty?)")
    total_ms, count = defaultdict(float), defaultdict(int)
    for name, ms in rows:
        key = short_name(name)
        total_ms[key] += ms
        count[key] += 1
    whole = sum(total_ms.values())
    ranked = sorted(total_ms, key=total_ms.get, reverse=True)
    print("| kernel | launches | total ms | share |")
    print("|---|---|---|---|")
    for key in ranked[: a.top]:
        print(f"| {key} | {count[key]} | {total_ms[key]:.3f} | {100 * total_ms[key] / whole:.1f}% |")
    rest = ranked[a.top :]
    if rest:
        ms = sum(total_ms[k] for k in rest)
        print(f"| ({len(rest)} more kernels) | {sum(count[k] for k in rest)} | {ms:.3f} | {100 * ms / whole:.1f}% |")
    print(f"| **all {len(rows)} launches** | {len(rows)} | {whole:.3f} | 100% |")


if __name__ == "__main__":
    sys.exit(main())
