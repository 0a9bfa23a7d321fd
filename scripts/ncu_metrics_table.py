#!/usr/bin/env python3
"""One column per profiled kernel launch, one row per metric: reads what `ncu --csv --metrics A,B,…`
printed (the program's own output mixed in is skipped) and prints a markdown table. Stall reasons
(smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio: cycles a warp spends stalled
for that reason per instruction issued) are named by their reason and listed largest first.

    ncu --csv --metrics gpu__time_duration.sum,… -k regex:flash_ --launch-count 2 flashgpt … > run.csv
    scripts/ncu_metrics_table.py run.csv
"""
import argparse
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_breakdown import short_name  # noqa: E402

STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio$")


def read_launches(lines):
    """[(kernel, {metric: (unit, value)})] in launch order."""
    header, launches, index = None, [], {}
    for row in csv.reader(line for line in lines if line.startswith('"')):
        if header is None:
            if "Kernel Name" in row and "Metric Value" in row and "Metric Name" in row:
                header = {h: i for i, h in enumerate(row)}
            continue
        if len(row) < len(header):
            continue
        key = row[header["ID"]] if "ID" in header else str(len(launches))
        if key not in index:
            index[key] = len(launches)
            launches.append((short_name(row[header["Kernel Name"]]), {}))
        launches[index[key]][1][row[header["Metric Name"]]] = (row[header["Metric Unit"]].strip(),
                                                               row[header["Metric Value"]].strip())
    if header is None:
        raise SystemExit("ncu_metrics_table: no ncu CSV header (\"Kernel Name\" … \"Metric Value\") in the input")
    if not launches:
        raise SystemExit("ncu_metrics_table: the input holds no profiled launch")
    return launches


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu's --csv output")
    a = ap.parse_args()
    with open(a.csv, encoding="utf-8", errors="replace") as f:
        launches = read_launches(f)
    names = []
    for _, metrics in launches:
        names += [m for m in metrics if m not in names]
    plain = [m for m in names if not STALL.match(m)]
    # Stall reasons, largest (summed over the launches) first.
    stalls = sorted((m for m in names if STALL.match(m)),
                    key=lambda m: -sum(number(ms[m][1]) or 0 for _, ms in launches if m in ms))
    print("| metric | " + " | ".join(k for k, _ in launches) + " |")
    print("|---|" + "---|" * len(launches))
    for m in plain + stalls:
        label = f"stalled: {STALL.match(m).group(1)} (cycles per issued instruction)" if STALL.match(m) else m
        cells = []
        for _, ms in launches:
            if m not in ms:
                cells.append("—")
                continue
            unit, value = ms[m]
            cells.append(value + (f" {unit}" if unit and unit not in ("", "ratio") and not STALL.match(m) else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
