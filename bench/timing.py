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


def interleaved_medians(fns: dict, rounds: int = 5, warm_up: bool = True) -> dict:
    """Median seconds of each fn, timed in alternating rounds so that a noisy machine (other
    tenants, clock changes) affects every implementation alike. One warm-up call each unless
    ``warm_up`` is False (runs of many seconds, where one-time costs vanish)."""
    for fn in fns.values() if warm_up else ():
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


def blocked_medians(fns: dict, repeats: int = 3, min_run_time: float = 0.5) -> dict:
    """Median over ``repeats`` alternating blocks of each fn's median_seconds: for short calls,
    where each path should be timed in its own steady state (back-to-back calls, the allocator
    reusing its last buffers) yet machine drift should hit every path alike."""
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(median_seconds(fn, min_run_time))
    return {name: statistics.median(v) for name, v in samples.items()}


def floor_fn(model, x: torch.Tensor, y: torch.Tensor, passes: int):
    """A callable running ``passes`` x (forward + input-backward) of ``model`` on x: the floor an
    attack's loop cannot beat. Time it on points the attack itself produced, not on clean x: on
    the CPU a model's passes cost more on perturbed images (max-pooling and ReLU-backward time
    depends on the values; about 10 % on the small CNN), which a clean-x floor would hide."""
    from robustkern.attacks.gradients import input_grad

    labels = (0, int(y.max()))
    return lambda: [input_grad(model, x, y, "ce", False, labels) for _ in range(passes)]


class GradientRows:
    """Counts the examples a model sends through forwards that will be backpropagated (grad
    mode on): a machine-independent measure of an attack's work. ``wrap(name, fn)`` returns fn
    recording that count for its last call in ``rows[name]``; the hook lives inside ``with``.
    It sits on the model's first leaf module (a Sequential's first layer): ART calls a
    Sequential's layers one by one, never the model itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.first = next(m for m in model.modules() if not any(m.children()))
        self.count, self.rows = 0, {}

    def __enter__(self) -> "GradientRows":
        self.hook = self.first.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()

    def _count(self, module, args) -> None:
        self.count += len(args[0]) if torch.is_grad_enabled() else 0

    def wrap(self, name: str, fn):
        def run():
            self.count = 0
            out = fn()
            self.rows[name] = self.count
            return out

        return run
