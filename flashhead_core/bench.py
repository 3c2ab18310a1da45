"""Benchmarks: `flashhead bench NAME`. Each benchmark prints one JSON line of numbers (and nothing is asserted:
speed targets are reported, not tested). Full-size models are built with random weights, never downloaded."""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

# name -> (function(args) -> dict of results, function(parser) adding its options)
BENCHES: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[argparse.ArgumentParser], None]]] = {}


def benchmark(name: str, add_options: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn):
        BENCHES[name] = (fn, add_options)
        return fn

    return register


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds; CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak device memory since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run(name: str, args: argparse.Namespace) -> dict:
    result = {"bench": name, **BENCHES[name][0](args), **environment(torch.device(args.device))}
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------------------------
# The benchmarks, one section per stage.
