"""Timing helpers shared by the benchmarks: medians from torch.utils.benchmark."""

import statistics
import time

import torch
import torch.utils.benchmark as benchmark


def median_seconds(fn, min_run_time: float = 1.0) -> float:
    """Median time of fn() (warmed up; CUDA synchronised by torch.utils.benchmark)."""
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(fns: dict, rounds: int = 5) -> dict:
    """Median seconds of each fn, timed in alternating rounds so that a noisy machine (other
    tenants, clock changes) affects every implementation alike. One warm-up call each."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}
