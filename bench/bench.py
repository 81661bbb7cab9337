"""Speed benchmark: mlp_core against its floor on this machine, a plain numpy implementation of
the protocol and, when torch is importable, PyTorch eager (`make bench`).

    .venv/bin/python bench/bench.py            # the full benchmark (about two minutes)
    .venv/bin/python bench/bench.py --quick    # small data, one round: checks that it runs
    .venv/bin/python bench/bench.py --against 78208ef   # today's mlp_core beside 78208ef's (~1 min)
    .venv/bin/python bench/bench.py --core /tmp/proposal/mlp_core.py --against HEAD  # a proposal

For the networks [64], [128] and ten hidden layers of 64, one process runs, interleaved and
repeated (medians of --repeats rounds), one protocol epoch (reshuffle, 625 steps of 32 images, a
validation every 125 steps from step 0: loss and accuracy on the 10,000 validation images and on
the 20,000 training images) of each implementation:

* the floor (bench/floor.py): 5 x the first layer's product over the 30,000 images a validation
  evaluates (30,000 x 785 @ 785 x width, float32, one call) + 625 x the per-call cost of every
  numpy primitive of a training step (each timed alone, in a loop, at the step's shapes); one BLAS
  thread. It is measured in every round, and each epoch is given as a ratio to the floor of its
  own round ("× floor"): the machine is shared and noisy, ratios within a round much less so;
* reference: bench/reference_mlp.py, plain numpy as a student would write it (float64, new arrays
  on every step, three separate passes per validation);
* mlp_core in float64 and in float32 (the default), one BLAS thread (train()'s default), and
  float32 with two BLAS threads;
* PyTorch eager on the CPU, float32, one thread (torch.set_num_threads(1)), the same network
  785-64-10 sigmoid, the same initial weights, batch 32, 625 steps over a fresh permutation, SGD
  lr 0.1 (torch.optim.SGD), 5 validations over the same 20,000 + 10,000 images, beside mlp_core
  float32 in the same rounds. Only when torch can be imported: torch is not a dependency of the
  project. To get these rows, make a throwaway environment, e.g.
      python3 -m venv /tmp/torchvenv
      /tmp/torchvenv/bin/pip install torch numpy==2.4.6 threadpoolctl==3.8.0 tqdm
      PYTHONPATH=. /tmp/torchvenv/bin/python bench/bench.py
  (a CPU build of torch; on this project's machines pip finds one locally).

The numpy implementations start from the same initial weights and shuffle with the same generator,
so they take the same steps (PyTorch: the same initial weights, its own shuffling). The header
names the CPU model and the BLAS library numpy uses (threadpoolctl: internal_api, version, kernel
architecture, threads). The table gives, as medians over the rounds: the time of a training step
(the epoch minus its validations, per step), of one validation pass, of the whole protocol epoch
(steps + 5 validations), the share of the epoch spent in training steps (the rest: validations),
the system (kernel) CPU time of the epoch, the speed-up over the reference, the ratio to the
floor, and the ratio to the FLOP limit: the time the epoch's matrix products would take at the
float32 matmul peak (--peak-gflops, 190 GFLOP/s measured on the project's machine; the peak of one
thread of the BLAS in use is measured and printed too). Rows that start a second thread (two BLAS
threads, PyTorch) run after the single-threaded ones, in their own interleaved rounds. The plain
reference allocates large arrays on every step, so its time depends on how fast the kernel hands
out and takes back memory: where its "sys ms" is high, its steps were slowed by that.

Then, per network: where mlp_core float32's epoch goes (its steps and its validations, each
beside its part of the floor), and for the first network the floor part by part; how closely
float32 and float64 runs of the same seed agree (and the reference with mlp_core in float64); and
the peak memory of a training run of each network (bench/measure_memory.py).

With --against REF, the benchmark above is replaced by a side-by-side comparison: the mlp_core.py
of the git commit REF is loaded (from git, as a separate module) into the same process as today's,
and one protocol epoch of train() (float32, one BLAS thread, the same data and seed) of each is
timed, interleaved and repeated (15 times by default, alternating which goes first), per network.
The table gives the median epoch time of each and the ratio today/REF, of the whole epoch, of its
training steps and of its validations, and says whether both took bit-identical training steps
(the same batch losses, and the same weights after the epoch). The project's requirement: today's
[64] float32 protocol epoch is within 5 % of that of 78208ef (at most 5 % slower), measured this
way in one run; the last line says whether it holds. Timings on a busy machine are noisy: the
header gives the load average at the start; run it on an otherwise idle machine. --core PATH
times the mlp_core.py at PATH as "today's" (a proposed change, say), in both modes;
bench/bit_identity.py checks that two mlp_core.py files train bit for bit alike.

The BLAS kernel matters: on machines that set OPENBLAS_CORETYPE (see the header line), OpenBLAS
runs an older, slower kernel than the processor supports. To benchmark the processor's own kernel,
unset that variable and OPENBLAS_L2_SIZE together for that one command:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE make bench
"""

from __future__ import annotations

import argparse
import dataclasses
import linecache
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")

import floor as floor_mod  # noqa: E402
import reference_mlp as ref  # noqa: E402
from tqdm import tqdm as _tqdm  # noqa: E402

import mlp_core as mlp  # noqa: E402

# train() creates a (disabled) tqdm bar, and tqdm starts a monitor thread for any bar, which wakes
# every 10 s. A process whose threads have run on both cores frees memory much more slowly (see
# benchmark()), which would slow the allocation-heavy reference: switch the monitor off.
_tqdm.monitor_interval = 0

NETWORKS = {"[64]": (64, 10), "[128]": (128, 10), "10 x [64]": (64,) * 10 + (10,)}
VALIDATIONS = 5  # per protocol epoch


@dataclass
class Timing:
    epoch: float  # one protocol epoch: reshuffle, every step, every validation (s)
    eval_pass: float  # one validation: loss and accuracy on both sets (s, median within the epoch)
    step: float  # (epoch - its validations) / steps (s)
    system: float = 0.0  # CPU time the kernel spent for the process during the epoch (s)


def _system_time() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


# ---- the implementations ------------------------------------------------------------------------


def time_mlp_core(
    config: mlp.RunConfig,
    data: mlp.Dataset,
    blas_threads: int,
    core: types.ModuleType | None = None,
    second_core: bool = False,
) -> tuple[Timing, mlp.History]:
    """One protocol epoch of `core`.train (default today's mlp_core; or an earlier one, see
    load_core_at, and `config` must then be its RunConfig). Its validations are timed by wrapping
    what measures them (core._Validations.measure, or core._validate in earlier cores); the
    steps' time is the epoch's minus theirs. `second_core`: validate on a second thread (cores
    that have it); the validations' time is then what the training thread spent on them."""
    core = core or mlp
    times = []
    serial = getattr(core, "_Validations", None)
    owner, name = (serial, "measure") if serial is not None else (core, "_validate")
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        result = original(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return result

    setattr(owner, name, timed)
    options = {"second_core": second_core} if serial is not None else {}
    sys0 = _system_time()
    try:
        hist = core.train(
            config.replace(max_epochs=1),
            data,
            progress=False,
            blas_threads=blas_threads,
            **options,
        )
    finally:
        setattr(owner, name, original)
    epoch = hist.epoch_times[0]
    if second_core:
        times = [epoch - hist.step_times[0]]
    validations = times[:-1] if serial is not None and not second_core else times  # not the final
    return Timing(
        epoch,
        statistics.median(validations) if validations else math.nan,
        (epoch - sum(validations)) / config.steps_per_epoch,
        _system_time() - sys0,
    ), hist


def initial_state(config: mlp.RunConfig) -> tuple[list[np.ndarray], np.random.SeedSequence]:
    """The initial weights (float64) and the shuffling seed mlp_core.train uses for `config`."""
    init_seq, shuffle_seq = np.random.SeedSequence(config.seed).spawn(2)
    model = mlp.MLP(
        config.layer_sizes,
        activation=config.activation,
        init=config.init,
        rng=np.random.default_rng(init_seq),
        dtype="float64",
    )
    return model.weights, shuffle_seq


def run_reference(
    config: mlp.RunConfig, data64: mlp.Dataset, blas_threads: int
) -> tuple[Timing, ref.Trainer]:
    """One protocol epoch of the plain reference, from mlp_core's initial weights and shuffling."""
    weights, shuffle_seq = initial_state(config)
    model = ref.Model(weights, improved_sigmoid_on=config.activation == "improved_sigmoid")
    train, val = data64.train, data64.val
    trainer = ref.Trainer(
        model,
        train.X[: config.n_train],
        train.Y[: config.n_train],
        val.X[: config.n_val],
        val.Y[: config.n_val],
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        batch_size=config.batch_size,
        validations_per_epoch=config.validations_per_epoch,
        rng=np.random.default_rng(shuffle_seq),
    )
    times = []
    original = trainer.validate

    def timed():
        t0 = time.perf_counter()
        original()
        times.append(time.perf_counter() - t0)

    trainer.validate = timed
    with threadpool_limits(blas_threads, user_api="blas"):
        sys0, t0 = _system_time(), time.perf_counter()
        trainer.train_epoch()
        epoch = time.perf_counter() - t0
    return Timing(
        epoch,
        statistics.median(times),
        (epoch - sum(times)) / trainer.steps_per_epoch,
        _system_time() - sys0,
    ), trainer


def torch_available() -> bool:
    """Whether PyTorch is installed (without importing it: importing it starts threads)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def time_torch(config: mlp.RunConfig, data: mlp.Dataset, threads: int = 1) -> Timing:
    """The same protocol epoch in PyTorch eager (float32, CPU): autograd, torch.optim.SGD, fused
    validation (one forward pass per set under no_grad)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    weights, _ = initial_state(config)
    W = [torch.tensor(w, dtype=torch.float32, requires_grad=True) for w in weights]
    if config.activation == "sigmoid":
        f = torch.sigmoid
    else:

        def f(z):
            return 1.7159 * torch.tanh(z * (2.0 / 3.0))

    def tensor(a):
        return torch.from_numpy(np.array(a))  # a writable copy

    X, y = tensor(data.train.X[: config.n_train]), tensor(data.train.labels[: config.n_train])
    Xv, yv = tensor(data.val.X[: config.n_val]), tensor(data.val.labels[: config.n_val])
    opt = torch.optim.SGD(W, lr=config.learning_rate, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)

    def logits(a):
        for w in W[:-1]:
            a = f(a @ w)
        return a @ W[-1]

    def evaluate(a, labels):
        z = logits(a)
        return F.cross_entropy(z, labels).item(), (z.argmax(1) == labels).float().mean().item()

    bs, interval, times = config.batch_size, config.validation_interval, []
    sys0, t0 = _system_time(), time.perf_counter()
    perm = torch.randperm(config.n_train, generator=gen)
    for k in range(config.steps_per_epoch):
        idx = perm[k * bs : (k + 1) * bs]
        loss = F.cross_entropy(logits(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if k % interval == 0:
            tv = time.perf_counter()
            with torch.no_grad():
                evaluate(X, y), evaluate(Xv, yv)
            times.append(time.perf_counter() - tv)
    epoch = time.perf_counter() - t0
    return Timing(
        epoch,
        statistics.median(times),
        (epoch - sum(times)) / config.steps_per_epoch,
        _system_time() - sys0,
    )


# ---- FLOPs and the machine ----------------------------------------------------------------------


def flops(config: mlp.RunConfig) -> tuple[float, float]:
    """Matrix-product FLOPs of one training step and of one validation pass (2 per multiply-add)."""
    fans = (mlp.INPUT_SIZE,) + config.layer_sizes
    macs = [a * b for a, b in zip(fans[:-1], fans[1:])]
    # forward, weight gradients, and the deltas sent back through every layer but the first
    step = 2 * config.batch_size * (2 * sum(macs) + sum(macs[1:]))
    eval_pass = 2 * (config.n_train + config.n_val) * sum(macs)
    return step, eval_pass


def measured_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """float32 matmul speed of one BLAS thread on a square product (best of `repeats`)."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    with threadpool_limits(1, user_api="blas"):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas_line() -> str:
    """The BLAS library numpy uses, its kernel and threads (threadpoolctl), and the CPU model."""
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    cpu = f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs"
    if not info:
        return f"{cpu}\nBLAS: unknown (threadpoolctl found no BLAS library)"
    i = info[0]
    env = ", ".join(
        f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
    )
    kernel = i.get("architecture") or i.get("corename") or "unknown"
    return (
        f"{cpu}\nBLAS: {i.get('internal_api')} {i.get('version')}, kernel {kernel}, "
        f"{i.get('num_threads')} threads available, threading layer {i.get('threading_layer')}"
        + (f" ({env} set)" if env else "")
        + f"\n  ({i.get('filepath')})"
    )


def torch_line() -> str:
    """Which torch the PyTorch rows use, or why they are left out (without importing torch)."""
    if not torch_available():
        return (
            f"PyTorch rows skipped: torch is not importable by {sys.executable} (it is not a "
            "dependency of the project; see the module docstring for a throwaway venv)"
        )
    import importlib.metadata

    import torch

    try:
        installer = importlib.metadata.distribution("torch").read_text("INSTALLER") or ""
    except importlib.metadata.PackageNotFoundError:
        installer = ""
    where = (
        "the project's .venv" if Path(sys.prefix) == REPO / ".venv" else "a separate environment"
    )
    return (
        f"PyTorch {torch.__version__}, installed by {installer.strip() or 'an unknown installer'} "
        f"into {sys.prefix} ({where}; torch is not a dependency of the project, installed only "
        f"for this measurement); {torch.get_num_threads()} threads by default, its rows run with "
        "torch.set_num_threads(1)"
    )


# ---- the benchmark ------------------------------------------------------------------------------

FLOOR = "floor (see below)"
HEADER = (
    f"{'network':<10} {'implementation':<34} {'step µs':>8} {'eval ms':>8} {'epoch ms':>9} "
    f"{'(range)':>13} {'steps %':>7} {'sys ms':>7} {'vs ref':>7} {'× floor':>8} "
    f"{'× FLOP limit':>12}"
)


@dataclass
class Row:
    """The repeats of one implementation, each with the floor measured in the same round."""

    timings: list[Timing]
    floors: list[floor_mod.Floor]

    def median(self, attr: str) -> float:
        return statistics.median(getattr(t, attr) for t in self.timings)

    def times_floor(self) -> float:
        """Median over the rounds of (this epoch / the floor of the same round)."""
        return statistics.median(t.epoch / f.total for t, f in zip(self.timings, self.floors))

    def steps_fraction(self, steps: int) -> float:
        """Median share of the epoch spent in training steps (the rest: the validations)."""
        return statistics.median(t.step * steps / t.epoch for t in self.timings)


def floor_timing(problem: floor_mod.FloorProblem) -> tuple[Timing, floor_mod.Floor]:
    floor = problem.measure()
    return Timing(floor.total, floor.product, floor.step), floor


def benchmark(args) -> None:
    n_train, n_val = (1600, 800) if args.quick else (20_000, 10_000)
    data32 = mlp.prepare_data(n_train, "float32", n_val)
    data64 = mlp.prepare_data(n_train, "float64", n_val)
    use_torch = not args.no_torch and torch_available()
    two_threads = (os.cpu_count() or 1) >= 2

    print(f"Python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(blas_line())
    print(torch_line() if not args.no_torch else "PyTorch rows left out (--no-torch)")
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (1 min)")
    peak = measured_peak_gflops()
    print(
        f"float32 matmul of one BLAS thread, measured now: {peak:.0f} GFLOP/s; "
        f"FLOP limit taken at {args.peak_gflops:g} GFLOP/s"
    )
    print(
        f"protocol epoch: {n_train:,} training and {n_val:,} validation images, batch 32, "
        f"{VALIDATIONS} validations; medians of {args.repeats} interleaved rounds\n"
    )
    # Rows that start a second thread (PyTorch, then two BLAS threads) are timed after all the
    # single-threaded ones, each group in its own rounds: once the process had run a second
    # thread, the allocation-heavy reference's steps took three times as long here, the extra time
    # all spent in the kernel (freeing memory costs much more in a process whose threads have run
    # on both cores). The floor is measured in every round of every group: each epoch is divided
    # by the floor of its own round.
    configs = {
        name: mlp.RunConfig(layer_sizes=NETWORKS[name], n_train=n_train, n_val=n_val, max_epochs=1)
        for name in args.networks
    }
    single = {
        "reference (plain numpy, float64)": lambda c: run_reference(c, data64, 1)[0],
        "mlp_core float64": lambda c: time_mlp_core(c.replace(dtype="float64"), data64, 1)[0],
        "mlp_core float32 (default)": lambda c: time_mlp_core(c, data32, 1)[0],
    }
    beside_torch = {}
    if use_torch:  # beside mlp_core float32 again: the two compared in the same rounds
        beside_torch["mlp_core float32, beside PyTorch"] = lambda c: time_mlp_core(c, data32, 1)[0]
        beside_torch["PyTorch eager float32, 1 thread"] = lambda c: time_torch(c, data32, 1)
    second = {}  # one run on both cores, beside the serial path in the same rounds
    threaded = {}  # last: OpenBLAS's second thread spins for a while after each of its calls
    if two_threads:
        second["mlp_core float32, serial"] = lambda c: time_mlp_core(c, data32, 1)[0]
        second["mlp_core float32, second core"] = lambda c: time_mlp_core(
            c, data32, 1, second_core=True
        )[0]
        threaded["mlp_core float32, blas_threads=2"] = lambda c: time_mlp_core(c, data32, 2)[0]
    rows = {name: {} for name in configs}
    floors = {name: [] for name in configs}  # of the first group's rounds, for the breakdown
    for group in (single, beside_torch, second, threaded):
        if not group:
            continue
        for name, config in configs.items():
            print(f"timing {name}: {', '.join(group)} and the floor", file=sys.stderr, flush=True)
            problem = floor_mod.FloorProblem(config, data32, mlp)
            for fn in group.values():  # warm-up: caches, BLAS buffers, lazy imports
                fn(config)
            problem.measure()
            group_rows = {label: Row([], []) for label in (FLOOR, *group)}
            for _ in range(args.repeats):  # interleaved
                timing, floor = floor_timing(problem)
                group_rows[FLOOR].timings.append(timing)
                for label, fn in group.items():
                    group_rows[label].timings.append(fn(config))
                for row in group_rows.values():
                    row.floors.append(floor)
                if group is single:
                    floors[name].append(floor)
            if group is single:
                rows[name][FLOOR] = group_rows[FLOOR]
            rows[name].update({label: group_rows[label] for label in group})

    print(HEADER)
    print("-" * len(HEADER))
    for name, config in configs.items():
        print(results_table(name, config, rows[name], args.peak_gflops))
        print()
    print(
        f"{FLOOR}: {VALIDATIONS} x the first layer's product over the {n_train + n_val:,} images a "
        f"validation evaluates ({n_train + n_val:,} x 785 @ 785 x width, one call) + "
        f"{configs[args.networks[0]].steps_per_epoch} x the per-call cost of the numpy primitives "
        "of a training step, each timed alone at the step's shapes; float32, one BLAS thread "
        "(bench/floor.py). eval ms of the floor: the product; step µs: the primitives' sum. "
        "× floor: each epoch / the floor timed in the same round, median over the rounds. "
        "steps %: the share of the epoch in training steps, the rest in its validations.\n"
    )
    for i, (name, config) in enumerate(configs.items()):  # the floor's parts of the first network
        print(where_the_time_goes(name, config, rows[name], floors[name], detail=i == 0))
        print()

    agreement(args, data32, data64)
    if not args.no_memory:
        from measure_memory import NETWORKS as MEM_NETWORKS
        from measure_memory import measure, table

        print(table({n: measure(MEM_NETWORKS[n]) for n in args.networks}, "float32", 1))


def results_table(name: str, config: mlp.RunConfig, rows: dict[str, Row], peak: float) -> str:
    """The rows of one network: medians, ratios to the reference, the floor and the FLOP limit."""
    step_flops, eval_flops = flops(config)
    limit = (config.steps_per_epoch * step_flops + VALIDATIONS * eval_flops) / (peak * 1e9)
    ref_epoch = rows["reference (plain numpy, float64)"].median("epoch")
    lines = []
    for label, row in rows.items():
        ts = row.timings
        epoch = row.median("epoch")
        spread = f"{min(t.epoch for t in ts) * 1e3:.0f}-{max(t.epoch for t in ts) * 1e3:.0f}"
        steps = "" if label == FLOOR else f"{row.steps_fraction(config.steps_per_epoch):.0%}"
        system = "" if label == FLOOR else f"{row.median('system') * 1e3:.0f}"
        lines.append(
            f"{name:<10} {label:<34} {row.median('step') * 1e6:8.1f} "
            f"{row.median('eval_pass') * 1e3:8.1f} {epoch * 1e3:9.1f} {spread:>13} {steps:>7} "
            f"{system:>7} {ref_epoch / epoch:6.2f}× {row.times_floor():7.2f}× "
            f"{epoch / limit:11.2f}×"
        )
    lines.append(
        f"{name:<10} {'FLOP limit':<34} {step_flops / peak / 1e3:8.1f} "
        f"{eval_flops / peak / 1e6:8.1f} {limit * 1e3:9.1f}"
    )
    two_cores = rows.get("mlp_core float32, second core")
    if two_cores is not None:
        serial = rows["mlp_core float32, serial"]
        share = statistics.median(
            t.epoch / s.epoch for t, s in zip(two_cores.timings, serial.timings)
        )
        lines.append(
            f"{name:<10} one run on the second core takes {share:.2f}× the serial epoch "
            "(the same rounds; median of the per-round ratios)"
        )
    torch_row = rows.get("PyTorch eager float32, 1 thread")
    if torch_row is not None:
        ours = rows["mlp_core float32, beside PyTorch"]
        speedup = statistics.median(
            p.epoch / o.epoch for p, o in zip(torch_row.timings, ours.timings)
        )
        lines.append(
            f"{name:<10} mlp_core float32 is {speedup:.2f}× as fast as PyTorch eager float32 "
            f"(one thread each, the same rounds; median of the per-round ratios)"
        )
    return "\n".join(lines)


def where_the_time_goes(
    name: str,
    config: mlp.RunConfig,
    rows: dict[str, Row],
    floors: list[floor_mod.Floor],
    detail: bool = True,
) -> str:
    """mlp_core float32's epoch split into steps and validations, each beside its floor, and (with
    `detail`) the floor's parts; medians over the rounds."""
    ours = rows["mlp_core float32 (default)"]
    steps = config.steps_per_epoch
    median = statistics.median
    floor = floor_mod.Floor(
        median(f.product for f in floors),
        {k: median(f.primitives[k] for f in floors) for k in floors[0].primitives},
        floors[0].steps,
        floors[0].validations,
    )
    step_part = median(t.step * steps for t in ours.timings)
    validation_part = median(t.epoch - t.step * steps for t in ours.timings)
    epoch = ours.median("epoch")
    lines = [
        f"Where one protocol epoch of mlp_core float32 goes, {name} (medians over the rounds):",
        f"  {'':<22} {'mlp_core ms':>11} {'share':>6} {'floor ms':>9} {'× floor':>8}",
        f"  {'training steps':<22} {step_part * 1e3:11.1f} {step_part / epoch:6.0%} "
        f"{floor.steps_part * 1e3:9.1f} {step_part / floor.steps_part:7.2f}×",
        f"  {'validations':<22} {validation_part * 1e3:11.1f} {validation_part / epoch:6.0%} "
        f"{floor.validations_part * 1e3:9.1f} {validation_part / floor.validations_part:7.2f}×",
        f"  {'epoch':<22} {epoch * 1e3:11.1f} {1:6.0%} {floor.total * 1e3:9.1f} "
        f"{ours.times_floor():7.2f}×",
    ]
    if detail:
        lines.append(floor_mod.table(floor, f"The floor of {name}, part by part:"))
    return "\n".join(lines)


def agreement(args, data32: mlp.Dataset, data64: mlp.Dataset) -> None:
    """float32 against float64 runs of mlp_core with the same seed, and the plain reference against
    mlp_core float64 (same initial weights, same shuffling)."""
    epochs = 1 if args.quick else args.agree_epochs
    n_train, n_val = len(data32.train), len(data32.val)
    print(
        "Agreement (seed 0; per-step batch losses over the first epoch; final metrics after "
        f"{epochs} epoch(s)):"
    )
    print(
        f"{'network':<10} {'compared':<28} {'max rel. diff, step losses':>27} "
        f"{'final val acc diff':>19} "
        f"{'final val loss rel. diff':>25}"
    )
    for name in args.networks:
        config = mlp.RunConfig(
            layer_sizes=NETWORKS[name], n_train=n_train, n_val=n_val, max_epochs=epochs
        )
        h32 = mlp.train(config, data32, progress=False)
        h64 = mlp.train(config.replace(dtype="float64"), data64, progress=False)
        spe = config.steps_per_epoch
        a, b = np.asarray(h32.train_loss[:spe]), np.asarray(h64.train_loss[:spe])
        print(
            f"{name:<10} {'mlp_core float32 vs float64':<28} "
            f"{np.max(np.abs(a - b) / np.abs(b)):27.2e} "
            f"{abs(h32.final['val_acc'] - h64.final['val_acc']):19.4f} "
            f"{abs(h32.final['val_loss'] - h64.final['val_loss']) / h64.final['val_loss']:25.2e}"
        )
        _, trainer = run_reference(config, data64, 1)
        h1 = mlp.train(config.replace(dtype="float64", max_epochs=1), data64, progress=False)
        last_val_loss = h1.val_loss[len(trainer.val_loss) - 1]
        r = np.asarray(trainer.train_loss)
        b = np.asarray(h1.train_loss[:spe])
        print(
            f"{name:<10} {'reference vs mlp_core f64':<28} "
            f"{np.max(np.abs(r - b) / np.abs(b)):27.2e} "
            f"{abs(trainer.val_acc[-1] - h1.val_acc[len(trainer.val_acc) - 1]):19.4f} "
            f"{abs(trainer.val_loss[-1] - last_val_loss) / h1.val_loss[-1]:25.2e}"
        )
    print("(reference rows: the last validation of the first epoch instead of final metrics)\n")


# ---- today's mlp_core beside an earlier commit's ------------------------------------------------

REQUIRED = ("[64]", 0.05)  # today's [64] float32 protocol epoch within 5 % of the compared commit's
CORE_API = ("RunConfig", "train", "_validate")  # what the comparison uses of an mlp_core


def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise ValueError("--against needs git, which was not found on PATH") from None


def git_source(ref: str, path: str = "mlp_core.py") -> tuple[str, str]:
    """The text of `path` at the git commit `ref`, and that commit's full hash. ValueError (with a
    message for people) when git does not know `ref` or the commit has no such file."""
    found = _git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise ValueError(
            f"--against {ref!r}: no such commit in {REPO} (try a hash from `git log --oneline`)"
        )
    commit = found.stdout.strip()
    shown = _git("show", f"{commit}:{path}")
    if shown.returncode != 0:
        raise ValueError(f"--against {ref!r}: commit {commit[:7]} has no {path}")
    return shown.stdout, commit


def load_core_at(ref: str) -> types.ModuleType:
    """mlp_core.py as it was at the git commit `ref`, imported beside today's as the module
    mlp_core_at_<hash>. Its __file__ is a name in the repository folder that no file has, so that
    paths it derives from it (its data folder) are those of a checkout of that commit."""
    source, commit = git_source(ref)
    name = f"mlp_core_at_{commit[:7]}"
    if name in sys.modules:
        return sys.modules[name]
    filename = str(REPO / f"mlp_core.py@{commit[:7]}")
    linecache.cache[filename] = (
        len(source),
        None,
        source.splitlines(True),
        filename,
    )  # for tracebacks
    module = types.ModuleType(name, f"mlp_core.py of commit {commit}")
    module.__file__ = filename
    sys.modules[name] = module  # before exec: @dataclass looks the class's module up in sys.modules
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 (the project's own history)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(
            f"--against {ref!r}: the mlp_core.py of commit {commit[:7]} does not import here "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    missing = [attr for attr in CORE_API if not hasattr(module, attr)]
    if missing:
        raise ValueError(
            f"--against {ref!r}: the mlp_core.py of commit {commit[:7]} has no "
            f"{', '.join(missing)}, so its epochs cannot be timed the same way"
        )
    return module


def load_core_file(path: str, name: str = "mlp_core_candidate") -> types.ModuleType:
    """An mlp_core.py from a file (a proposed change, say), imported as the module `name`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not Path(path).is_file():
        raise ValueError(f"--core {path!r}: no such file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: @dataclass looks the class's module up in sys.modules
    spec.loader.exec_module(module)
    return module


def core_config(core: types.ModuleType, config: mlp.RunConfig):
    """`config` as a RunConfig of `core` (fields it does not know must be at their defaults)."""
    known = {f.name for f in dataclasses.fields(core.RunConfig)}
    changed = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}
    if changed - known:
        raise ValueError(
            f"the compared mlp_core's RunConfig has no {', '.join(sorted(changed - known))}"
        )
    return core.RunConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in known})


@dataclass
class SideBySide:
    """The epochs of one network, timed alternately with the earlier and today's mlp_core, and the
    last run of each (every repeat takes the same steps)."""

    old: list[Timing]
    new: list[Timing]
    old_run: object  # the earlier mlp_core's History
    new_run: mlp.History
    floors: list[floor_mod.Floor]  # measured in every repeat, between the two epochs

    def times_floor(self, which: str) -> float:
        """Median over the repeats of the epoch of `which` ("old", "new") / the repeat's floor."""
        timings = self.old if which == "old" else self.new
        return statistics.median(t.epoch / f.total for t, f in zip(timings, self.floors))

    def ratio(self, attr: str = "epoch") -> float:
        """today / earlier, of the medians of a Timing field."""
        return statistics.median(getattr(t, attr) for t in self.new) / statistics.median(
            getattr(t, attr) for t in self.old
        )

    def paired_ratios(self) -> list[float]:
        """today / earlier epoch time, repeat by repeat."""
        return [n.epoch / o.epoch for n, o in zip(self.new, self.old)]

    def training(self) -> str:
        """Whether both took the same steps: the same batch losses and weights, bit for bit."""
        a, b = np.asarray(self.new_run.train_loss), np.asarray(self.old_run.train_loss)
        if a.shape != b.shape:
            return f"differ ({len(a)} and {len(b)} steps)"
        if not np.array_equal(a, b):
            return f"differ (losses: max rel. diff {np.max(np.abs(a - b) / np.abs(b)):.1e})"
        same = all(
            np.array_equal(x, y)
            for x, y in zip(self.new_run.weights, self.old_run.weights, strict=True)
        )
        return "bit-identical" if same else "same losses, weights differ"


def side_by_side(
    old: types.ModuleType, config: mlp.RunConfig, data: mlp.Dataset, repeats: int
) -> SideBySide:
    """One protocol epoch of each mlp_core, after a warm-up, `repeats` times, alternating which
    runs first."""
    cores = {"old": (old, core_config(old, config)), "new": (mlp, config)}
    for core, c in cores.values():
        time_mlp_core(c, data, 1, core)
    problem = floor_mod.FloorProblem(config, data, mlp)
    timings, runs, floors = {"old": [], "new": []}, {}, []
    for r in range(repeats):
        for i, which in enumerate(("old", "new") if r % 2 == 0 else ("new", "old")):
            if i == 1:
                floors.append(problem.measure())
            core, c = cores[which]
            timing, runs[which] = time_mlp_core(c, data, 1, core)
            timings[which].append(timing)
    return SideBySide(timings["old"], timings["new"], runs["old"], runs["new"], floors)


def compare_with(args) -> None:
    """Time today's mlp_core beside that of the commit args.against and print the table."""
    old = load_core_at(args.against)
    ref = old.__name__.removeprefix("mlp_core_at_")
    n_train, n_val = (1600, 800) if args.quick else (20_000, 10_000)
    data = mlp.prepare_data(n_train, "float32", n_val)
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} (1 min) at the start"
    )
    print(blas_line())
    print(
        f"protocol epoch: {n_train:,} training and {n_val:,} validation images, batch 32, "
        f"{VALIDATIONS} validations, float32, one BLAS thread, seed 0; medians of {args.repeats} "
        "interleaved repeats\n"
    )
    results = {}
    for name in args.networks:
        print(f"timing {name}: {ref} and today", file=sys.stderr, flush=True)
        config = mlp.RunConfig(
            layer_sizes=NETWORKS[name], n_train=n_train, n_val=n_val, max_epochs=1
        )
        results[name] = side_by_side(old, config, data, args.repeats)
    print(side_by_side_table(results, ref))
    network, tolerance = REQUIRED
    if network in results:
        ratio = results[network].ratio()
        print(
            f"\nRequirement: today's {network} float32 protocol epoch at most {tolerance:.0%} "
            "slower than "
            f"{ref}'s: {'met' if ratio <= 1 + tolerance else 'NOT met'} (today/{ref} = {ratio:.3f})"
        )


def side_by_side_table(results: dict[str, SideBySide], ref: str) -> str:
    ratio = f"today/{ref}"
    header = (
        f"{'network':<10} {ref + ' ms':>11} {'today ms':>9} {ratio:>14} {'per repeat':>11} "
        f"{'steps':>6} {'validations':>11} {ref + ' × floor':>15} {'today × floor':>13}  training"
    )
    lines = [
        f"One protocol epoch of train(), today's mlp_core against {ref}'s:",
        header,
        "-" * len(header),
    ]
    for name, r in results.items():
        paired = r.paired_ratios()
        lines.append(
            f"{name:<10} {statistics.median(t.epoch for t in r.old) * 1e3:11.1f} "
            f"{statistics.median(t.epoch for t in r.new) * 1e3:9.1f} {r.ratio():14.3f} "
            f"{f'{min(paired):.2f}-{max(paired):.2f}':>11} {r.ratio('step'):6.3f} "
            f"{r.ratio('eval_pass'):11.3f} {r.times_floor('old'):14.2f}× "
            f"{r.times_floor('new'):12.2f}×  {r.training()}"
        )
    lines.append(
        f"({ratio}: of the median times of the epoch, of a training step, of a validation pass; "
        f"per repeat: the lowest and highest"
    )
    lines.append(
        " of the epochs' ratios. × floor: each epoch / the floor (see bench/floor.py) measured "
        "between the two epochs of its repeat, median over the repeats."
    )
    lines.append(" training bit-identical: the same batch losses and weights after the epoch)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="small data, one repeat, no memory runs: a few seconds"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats per implementation (default 5, with --against 15; 1 with --quick)",
    )
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument(
        "--peak-gflops", type=float, default=190.0, help="float32 matmul peak for the FLOP limit"
    )
    p.add_argument(
        "--agree-epochs", type=int, default=3, help="epochs of the float32/float64 agreement runs"
    )
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch row")
    p.add_argument("--no-memory", action="store_true", help="leave out the peak-memory runs")
    p.add_argument(
        "--core",
        metavar="PATH",
        help="time this mlp_core.py file as today's instead of the working tree's (a proposed "
        "change, say; with --against: beside that commit's)",
    )
    p.add_argument(
        "--against",
        metavar="REF",
        help="instead: time today's mlp_core beside that of the git "
        "commit REF (e.g. 78208ef), float32, in this one process",
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 15 if args.against else 5
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.quick:
        args.no_memory = True
    quick = " (quick: small data, not the protocol's sizes)" if args.quick else ""
    if args.core:
        global mlp
        try:
            mlp = load_core_file(args.core)
        except ValueError as exc:
            p.error(str(exc))
        quick += f"; today's mlp_core: {args.core}"
    if args.against:
        try:
            load_core_at(args.against)  # an unknown commit fails here, before any data is loaded
        except ValueError as exc:
            p.error(str(exc))
        print(f"mlp_core speed: today against {args.against}" + quick)
        compare_with(args)
        return 0
    print("mlp_core speed benchmark" + quick)
    benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
