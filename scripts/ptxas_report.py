#!/usr/bin/env python3
"""Registers, spills and stack of every CUDA kernel, as ptxas reports them for one architecture.

Needs nvcc, not a GPU:
    scripts/ptxas_report.py                  all of src/cuda/*.cu for sm_90a, as a Markdown table
    scripts/ptxas_report.py --arch 80 src/cuda/norm_cuda.cu
    scripts/ptxas_report.py --spills-only    only kernels with spills or a stack frame

A kernel that spills, or that ptxas holds to fewer registers than it needs, shows here before any
GPU runs it; the table's figures are the compiler's, not measurements. Any line in which ptxas
remarks on the warpgroup MMA (its C75xx messages: wgmma instructions serialized, a
warpgroup.arrive it had to inject, lost performance) is listed under the table.
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name):
    name = re.sub(r"flashgpt::cuda::on_gpu::|\(anonymous namespace\)::", "", name)
    return name.split("(")[0]


NOTES = collections.Counter()  # (file, mangled kernel, remark) -> times ptxas made it


def report(path, arch, nvcc):
    cmd = [nvcc, "-O3", "-DNDEBUG", "-DFLASHGPT_HAVE_CUDA=1", f"--generate-code=arch=compute_{arch},code=sm_{arch}",
           "-std=c++20", f"-I{ROOT}/include", f"-I{ROOT}/src", "-c", path, "-o", os.devnull, "-Xptxas", "-v"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"ptxas_report: {path}: nvcc failed:\n{run.stderr[-2000:]}")
    rows, current = [], None
    for line in run.stderr.splitlines():
        m = re.search(r"\((C75\d\d)\) (.*?)(?: in around line \d+)?(?: by compiler)?(?: to (.*?))? in function '([^']+)'", line)
        if m:
            code, what, why, fn = m.groups()
            NOTES[(os.path.basename(path), fn, f"{code} {what}" + (f" to {why}" if why else ""))] += 1
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = {"name": m.group(1)}
            rows.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
    for row, name in zip(rows, demangle([r["name"] for r in rows])):
        row["name"] = short(name)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="CUDA sources (default: src/cuda/*.cu)")
    ap.add_argument("--arch", default="90a", help="compute capability, e.g. 80, 86, 89, 90a (default 90a)")
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"), help="the CUDA compiler (default: nvcc, or $NVCC)")
    ap.add_argument("--spills-only", action="store_true", help="only kernels with spills or a stack frame")
    args = ap.parse_args()
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "src", "cuda", "*.cu")))
    print("| file | kernel | registers | stack bytes | spill stores | spill loads |")
    print("|---|---|---|---|---|---|")
    for path in files:
        for r in report(path, args.arch, args.nvcc):
            spills = r.get("stack", 0) or r.get("spill_st", 0) or r.get("spill_ld", 0)
            if args.spills_only and not spills:
                continue
            print(f"| {os.path.basename(path)} | `{r['name']}` | {r.get('regs', '?')} | {r.get('stack', 0)} | "
                  f"{r.get('spill_st', 0)} | {r.get('spill_ld', 0)} |")
    if NOTES:
        print("\nptxas on the warpgroup MMA:\n")
        keys = list(NOTES)
        for (path, _, remark), name in zip(keys, demangle([k[1] for k in keys])):
            print(f"- {path}, `{short(name)}`: {remark} ({NOTES[(path, _, remark)]}×)")


if __name__ == "__main__":
    main()
