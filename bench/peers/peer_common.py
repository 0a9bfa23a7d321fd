"""What the attention peers share: CUDA-event timing and writing each case as a JSON line."""
import json
import statistics

import torch


def time_ms(fn, repeats, inner=1):
    """Median ms of one call of fn over `repeats` samples of `inner` back-to-back calls, after three
    warm-up calls, timed with CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def emit(row, as_json, jsonl):
    """Prints the case as a JSON line when as_json, and appends it to the file jsonl when given."""
    if as_json:
        print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
