"""The report layer the task notebooks share: settings, experiments, metrics, claims, numbers and
tables.

* Settings from the environment: smoke mode ($MLP_SMOKE: tiny runs for tests), the number of
  seeds ($MLP_SEEDS, default 3) and strict claims ($MLP_STRICT). Unknown values are errors.
* Experiments: `experiments({label: RunConfig})` expands a notebook's networks over the seeds
  (and to smoke size); `run(...)` trains or loads them through mlp_runs and returns a `Runs`
  table of their histories. `epoch_seconds(...)` times networks one at a time, alone.
* One metric table, METRICS: how a number is computed from a run, how a sentence names it, how
  it is formatted; tables, the running text and the notes all use it.
* The one comparison rule: two networks differ in a metric when Welch's t-test over their seeds
  gives p < 0.05; otherwise they are the same. `Runs.check(a, b, claims)` backs claims about a
  pair of networks with it (`claims(...)` words such claims from the metric table),
  `check(claim, evidence)` every other claim: a claim the runs do not support gets a visible note
  (and fails the build under --strict). Where the argument does not rest on a comparison, the
  text takes the rule's verdict itself, `runs.verdict(a, b, metric)` ("larger, 0.0222 against
  0.0041 (p = 0.021)"), worded in one place, Comparison.phrase; `runs.vs(a, b, metric)` gives
  the two means ("0.1380 against 0.2977").
* Numbers for the running text (`pct`, `steps`, `num`, `sci`, `mean_std`, ...), written into the
  Markdown cells as inline expressions {eval}`...`, and `Table` (booktabs LaTeX in the PDF, an
  HTML table in the HTML report, both through pandas' Styler).
* Analyses a task computes from a network rather than from its history (Tables 3.4 and 4.5).
Plots live in mlp_plots.py; the ML itself in mlp_core.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import platform
import re
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import mlp_core as mlp
import mlp_runs
import mlp_store

ALPHA = 0.05  # significance level of the comparison rule
COMPARISON_RULE = (
    f"Two networks are said to differ in a metric when Welch's t-test over their seeds gives "
    f"p < {ALPHA:g} (two-sided); otherwise they are called the same."
)
SMOKE_SETTINGS = dict(n_train=2000, n_val=2000, max_epochs=2)  # what smoke mode changes
NBSP = "\u00a0"  # between a number and its unit: never broken across lines
UNTESTABLE = "†"  # marks a claim that one seed per network cannot test


# ---- settings from the environment ---------------------------------------------------------------

YES = ("1", "true", "yes", "on")
NO = ("", "0", "false", "no", "off")


def parse_flag(name: str, value: str) -> bool:
    """A yes/no setting: 1, true, yes, on are yes; 0, false, no, off and '' are no."""
    text = value.strip().lower()
    if text in YES:
        return True
    if text in NO:
        return False
    raise ValueError(
        f"{name}={value!r} is not understood: use 1 (or true, yes, on) to switch it on, "
        f"0 (or false, no, off, or unset) to switch it off"
    )


def env_flag(name: str) -> bool:
    """A yes/no environment variable (see parse_flag); unset is no."""
    return parse_flag(name, os.environ.get(name, ""))


def smoke_mode() -> bool:
    """$MLP_SMOKE: notebooks run a tiny version of every experiment (tests, CI)."""
    return env_flag("MLP_SMOKE")


def strict_mode() -> bool:
    """$MLP_STRICT: a claim the runs do not support is an error instead of a note."""
    return env_flag("MLP_STRICT")


def n_seeds(default: int = 3) -> int:
    """Seeds per network: $MLP_SEEDS if set (`make report SEEDS=1`), else 1 in smoke mode, else
    `default`."""
    value = os.environ.get("MLP_SEEDS", "").strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if value and (not (value.isascii() and value.isdigit()) or int(value) < 1):
        raise ValueError(f"MLP_SEEDS must be a positive integer such as 3, got {value!r}")
    if value:
        return int(value)
    return 1 if smoke_mode() else default


# ---- experiments and their runs ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiments:
    """A notebook's networks (label -> RunConfig named by its label), the seeds each is run with,
    and the labels of the networks whose time per epoch the notebook states."""

    networks: dict[str, mlp.RunConfig]
    seeds: tuple[int, ...]
    timed: tuple[str, ...] = ()

    def configs(self) -> list[mlp.RunConfig]:
        return [c.replace(seed=s) for c in self.networks.values() for s in self.seeds]


def experiments(
    networks: dict[str, mlp.RunConfig],
    seeds: Sequence[int] | None = None,
    timed: Sequence[str] = (),
) -> Experiments:
    """The networks of a notebook, each named by its label, shrunk in smoke mode, over n_seeds()
    seeds; `timed` lists the networks whose time per epoch is measured (epoch_seconds)."""
    if not isinstance(networks, dict) or not networks:
        raise ValueError("networks must be a non-empty dict {label: RunConfig}")
    for label, config in networks.items():
        if not isinstance(config, mlp.RunConfig):
            raise ValueError(f"network {label!r} must be a RunConfig, got {type(config).__name__}")
    if seeds is None:
        seeds = range(n_seeds())
    seeds = tuple(mlp.RunConfig(seed=s).seed for s in seeds)  # checked, as Python ints
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    unknown = [label for label in timed if label not in networks]
    if unknown:
        raise ValueError(f"timed names networks that are not in the experiments: {unknown}")
    smoke = SMOKE_SETTINGS if smoke_mode() else {}
    named = {label: c.replace(name=label, **smoke) for label, c in networks.items()}
    return Experiments(named, seeds, tuple(timed))


def networks_table(exps: Experiments) -> pd.DataFrame:
    """The networks of a notebook as the reader needs them: hidden layers, activation,
    initialisation, learning rate and momentum (what the hidden experiments cell sets)."""
    init_words = {"uniform": "uniform in [−1, 1]", "fan_in": "normal, std 1/√fan-in"}
    rows = []
    for label, c in exps.networks.items():
        rows.append(
            {
                "network": label,
                "hidden layers": " × ".join(map(str, c.layer_sizes[:-1])) or "none",
                "activation": c.activation.replace("_", " "),
                "initialisation": init_words[c.init],
                "learning rate": f"{c.learning_rate:g}",
                "momentum": f"{c.momentum:g}" if c.momentum else "none",
            }
        )
    return pd.DataFrame(rows)


def run(exps: Experiments, **kwargs) -> Runs:
    """Train or load every run of `exps` (see mlp_runs.run_experiments) as a Runs table."""
    if not isinstance(exps, Experiments):
        raise ValueError(f"run() needs rep.experiments(...), got {type(exps).__name__}")
    histories = mlp_runs.run_experiments(exps.configs(), **kwargs)
    by_label = {label: [h for h in histories if h.config.name == label] for label in exps.networks}
    return Runs(by_label)


# ---- dedicated timings ---------------------------------------------------------------------------

TIMING_REPEATS = 5  # rounds over the timed networks; each network's fastest epoch counts
QUIET = 0.15  # a timing is kept when other processes used less than this share of one core


def _machine() -> dict:
    """What a timing depends on besides the code: the CPU and the BLAS library."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if "model name" in line), cpu)
    except OSError:
        pass
    from threadpoolctl import threadpool_info

    blas = [
        {key: info.get(key) for key in ("internal_api", "version", "architecture")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {"cpu": cpu, "cores": os.cpu_count(), "blas": blas}


def _timing_probe(config: mlp.RunConfig) -> mlp.RunConfig:
    """One epoch of training steps of `config`, with a single cheap validation at step 0."""
    return config.replace(
        name="",
        seed=0,
        max_epochs=1,
        validations_per_epoch=1,
        n_val=min(config.n_val, 1000),
        record_grad_norms=False,
    )


def _timing_path(config: mlp.RunConfig):
    key = json.dumps(
        {"config": dataclasses.asdict(_timing_probe(config)), "code": mlp_store.code_digest()},
        sort_keys=True,
    )
    machine = json.dumps(_machine(), sort_keys=True)
    digest = hashlib.sha256((key + machine).encode()).hexdigest()[:24]
    return mlp_store.store_dir() / "timings" / f"epoch-{digest}.json"


def _cpu_of_others() -> float | None:
    """CPU seconds the whole machine has spent busy, less this process's: what other work took.
    None where /proc/stat cannot tell (not Linux)."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy - own.user - own.system


def epoch_seconds(exps: Experiments, measure: bool = True, fresh: bool = False) -> dict[str, float]:
    """Seconds per epoch of training steps (validations excluded) of every timed network of
    `exps`, each network timed alone on one thread: the fastest of TIMING_REPEATS epochs, the
    networks taken in turn (a busy moment slows them all alike, not one of them).

    The report build measures them after training, with nothing else of its own running, and
    keeps them for this machine; a timing during which other processes were busy is marked
    noisy and measured again by the next build (`fresh`: measure the missing and the noisy).
    A notebook run by hand uses what is kept and measures what is missing; measure=False gives
    NaN for those instead."""
    seconds = {}
    missing = {}
    for label in exps.timed:
        kept = _kept_timing(exps.networks[label])
        usable = kept is not None and (kept["quiet"] or not fresh)
        seconds[label] = kept["seconds"] if usable else math.nan
        if not usable:
            missing[label] = _timing_probe(exps.networks[label])
    if not missing or not measure:
        return seconds
    times = {label: [] for label in missing}
    others_before = _cpu_of_others()
    t0 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        for label, probe in missing.items():
            data = mlp.prepare_data(probe.n_train, probe.dtype, probe.n_val)
            hist = mlp.train(probe, data, progress=False, second_core=False)  # the steps alone
            times[label].append(hist.step_times[0])
    others_after = _cpu_of_others()
    elapsed = time.perf_counter() - t0
    quiet = others_before is None or others_after - others_before < QUIET * elapsed
    for label in missing:
        seconds[label] = min(times[label])
        _keep_timing(
            exps.networks[label], {"seconds": seconds[label], "all": times[label], "quiet": quiet}
        )
    return seconds


def kept_timings(exps: Experiments) -> dict[str, float | str | None]:
    """What is kept of each timed network's timing: its seconds when measured on a quiet machine,
    "noisy" when other work ran beside it, None when missing. The build executes a notebook
    again when this changes: a noisy number is replaced by a quiet one, not by another noisy
    one (on a machine that is always busy, every build would otherwise execute it again)."""
    kept = {label: _kept_timing(exps.networks[label]) for label in exps.timed}
    return {
        label: None if k is None else k["seconds"] if k["quiet"] else "noisy"
        for label, k in kept.items()
    }


def _kept_timing(config: mlp.RunConfig) -> dict | None:
    try:
        kept = json.loads(_timing_path(config).read_text())
        return {"seconds": float(kept["seconds"]), "quiet": bool(kept["quiet"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keep_timing(config: mlp.RunConfig, record: dict) -> None:
    path = _timing_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:
        pass  # a timing that cannot be kept is measured again where it is needed


# ---- numbers for the running text ----------------------------------------------------------------


class Text(str):
    """A string that shows as itself in Jupyter (no quotes): the value of an inline expression."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


_MINUS = str.maketrans({"-": "−"})
_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _finite(x) -> bool:
    return isinstance(x, (int, float, np.number)) and math.isfinite(float(x))


def num(x: float, decimals: int = 4) -> Text:
    """x with `decimals` decimals and a true minus sign: '0.1402', '−1.64'; '–' if not finite."""
    if not _finite(x):
        return Text("–")
    return Text(f"{x:,.{decimals}f}".translate(_MINUS))


def sig(x: float, digits: int = 3) -> Text:
    """x to `digits` significant digits, without exponent for ordinary sizes: '3.40', '0.00635'."""
    if not _finite(x):
        return Text("–")
    if x == 0:
        return Text("0")
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return num(x, decimals)


def pct(x: float, decimals: int = 2) -> Text:
    """A percentage (x already in %): '96.33 %'."""
    return Text(f"{num(x, decimals)}{NBSP}%") if _finite(x) else Text("–")


def count(x: float) -> Text:
    """A whole number with thousands separators (steps, images, parameters): '21,583'."""
    return Text(f"{round(float(x)):,}") if _finite(x) else Text("–")


def signed(x: float, decimals: int = 2) -> Text:
    """A signed number with a true minus sign: '+0.57', '−1.64'."""
    return Text(f"{x:+.{decimals}f}".translate(_MINUS)) if _finite(x) else Text("–")


def sci(x: float, digits: int = 3) -> Text:
    """x in scientific notation, '1.45 × 10⁻⁸' (the report build sets the power as math)."""
    if not _finite(x) or x == 0:
        return Text(f"{x:g}")
    exponent = math.floor(math.log10(abs(x)))
    mantissa = f"{x / 10**exponent:.{digits - 1}f}".translate(_MINUS)
    power = f"10{str(exponent).translate(_SUPERSCRIPTS)}"
    if mantissa in ("1", "1.0", "1.00"):
        return Text(power)
    return Text(f"{mantissa} × {power}")


_POWER = re.compile(r"(\d(?:\.\d+)?) × 10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)|\b10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)")
_PLAIN_DIGITS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def powers_as_math(text: str) -> str:
    """The powers of ten of sci() ('1.45 × 10⁻⁸') as LaTeX math ('$1.45 \\times 10^{-8}$'), for
    the PDF, whose text font has no superscript digits."""

    def power(m: re.Match) -> str:
        if m.group(1):
            return f"${m.group(1)} \\times 10^{{{m.group(2).translate(_PLAIN_DIGITS)}}}$"
        return f"$10^{{{m.group(3).translate(_PLAIN_DIGITS)}}}$"

    return _POWER.sub(power, text)


def mean_std(values: Sequence[float], fmt: str = ".4f", unit: str = "") -> Text:
    """'mean ± std' (sample standard deviation) of `values`; the value alone for one; '–' for
    none."""
    v = np.asarray(values, dtype=float)
    if not v.size:
        return Text("–")
    if v.size == 1:
        text = format(v[0], fmt)
    else:
        text = f"{format(v.mean(), fmt)}{NBSP}±{NBSP}{format(v.std(ddof=1), fmt)}"  # one unit
    return Text(text.translate(_MINUS) + unit)


def mean_std_sig(values: Sequence[float], digits: int = 3) -> Text:
    """'mean ± std', the mean to `digits` significant digits and the std to as many decimals."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(mean)))) if mean else digits - 1
    return mean_std(v, f".{decimals}f")


def seeds_note(n: int) -> Text:
    """'mean ± standard deviation over 3 seeds' or 'one seed', for captions."""
    return Text(f"mean ± standard deviation over {n} seeds" if n > 1 else "one seed")


# ---- the metric table ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """A number computed from one run: how, how a sentence names it, how a table heads it, and
    its format and unit."""

    value: Callable[[mlp.History], float]
    words: str  # in a sentence: "validation accuracy"
    header: str  # a table column: "val acc (%)"
    fmt: str = ".4f"
    unit: str = ""  # after the number in text: " %", " ms"
    comparatives: tuple[str, str, str] = ("higher", "lower", "about the same")  # a verdict's word

    def text(self, x: float) -> Text:
        """x in this metric's format and unit."""
        if not _finite(x):
            return Text("–")
        return Text(format(x, self.fmt).translate(_MINUS) + self.unit)


PERCENT = NBSP + "%"
LARGER = ("larger", "smaller", "about the same")  # the words of a verdict on a size
SOONER = ("later", "sooner", "about as soon")  # ... and on the step something first happens at
METRICS: dict[str, Metric] = {
    "train_loss": Metric(lambda h: h.final["train_loss"], "training loss", "train loss"),
    "val_loss": Metric(lambda h: h.final["val_loss"], "final validation loss", "val loss"),
    "train_acc": Metric(
        lambda h: 100 * h.final["train_acc"], "training accuracy", "train acc (%)", ".2f", PERCENT
    ),
    "val_acc": Metric(
        lambda h: 100 * h.final["val_acc"], "validation accuracy", "val acc (%)", ".2f", PERCENT
    ),
    "gap": Metric(
        lambda h: 100 * (h.final["train_acc"] - h.final["val_acc"]),
        "accuracy gap",
        "train − val acc (pp)",
        ".2f",
        NBSP + "points",
        comparatives=LARGER,
    ),
    "best_val_loss": Metric(lambda h: h.best_val_loss, "lowest validation loss", "lowest val loss"),
    "best_step": Metric(
        lambda h: h.best_step,
        "step of the lowest validation loss",
        "best at",
        ",.0f",
        comparatives=("later", "earlier", "at about the same step"),
    ),
    "steps": Metric(lambda h: h.steps, "number of steps", "steps", ",.0f"),
    "rise": Metric(
        lambda h: h.final["val_loss"] - h.best_val_loss,
        "rise of the validation loss after its lowest value",
        "final − lowest",
        comparatives=LARGER,
    ),
}


def metric(m: str | Metric) -> Metric:
    """A Metric, given itself or its name in METRICS."""
    if isinstance(m, Metric):
        return m
    if m not in METRICS:
        raise ValueError(f"unknown metric {m!r}: use one of {sorted(METRICS)} or a rep.Metric")
    return METRICS[m]


def steps_to(accuracy: float) -> Metric:
    """The first validation step at which the validation accuracy reaches `accuracy` (NaN if it
    never does)."""

    def first_step(h: mlp.History) -> float:
        reached = np.flatnonzero(np.asarray(h.val_acc) >= accuracy)
        return float(h.val_steps[reached[0]]) if reached.size else math.nan

    level = f"{100 * accuracy:.0f}"
    return Metric(first_step, f"steps to {level}{PERCENT}", f"{level} %", ",.0f", "", SOONER)


# ---- the runs of a notebook ----------------------------------------------------------------------


class Runs(dict):
    """label -> the histories of that network, one per seed. Metrics are computed over the runs
    that completed; a diverged or stopped run is left out, and tables say so."""

    def first(self, label: str) -> mlp.History:
        """The run of the first seed, the one the figures show."""
        return self[label][0]

    def per_seed(self, label: str, m: str | Metric) -> np.ndarray:
        """The metric of every completed run of `label` that has a value (NaN left out)."""
        f = metric(m).value
        values = np.array([f(h) for h in self[label] if h.completed], dtype=float)
        return values[~np.isnan(values)]

    def mean(self, label: str, m: str | Metric) -> float:
        return _mean(self.per_seed(label, m))

    def value(self, label: str, m: str | Metric) -> Text:
        """The mean over the seeds, in the metric's format and unit: '96.33 %'."""
        return metric(m).text(self.mean(label, m))

    def span(self, label: str, m: str | Metric) -> Text:
        """'lowest–highest' over the seeds, in the metric's format ('26,376–29,626'); one value
        when they are equal."""
        values = self.per_seed(label, m)
        if not values.size:
            return Text("–")
        low, high = metric(m).text(values.min()), metric(m).text(values.max())
        return low if low == high else Text(f"{low}–{high}")

    def mean_std(self, label: str, m: str | Metric) -> Text:
        """'mean ± std' over the seeds in the metric's format and unit ('96.33 ± 0.11 %'), for
        the running text."""
        m = metric(m)
        return Text(self.cell(label, m) + (m.unit if self.per_seed(label, m).size else ""))

    def cell(self, label: str, m: str | Metric) -> Text:
        """'mean ± std' over the seeds in the metric's format, for a table, naming the runs left
        out: '0.1402 ± 0.0048 (2 of 3 seeds; 1 diverged)'."""
        m = metric(m)
        values = self.per_seed(label, m)
        text = mean_std(values, m.fmt)
        left_out = [h for h in self[label] if not h.completed]
        if left_out:
            reasons = pd.Series([h.stop_reason.replace("_", " ") for h in left_out])
            lost = "; ".join(f"{n} {reason}" for reason, n in reasons.value_counts().items())
            text = f"{text} ({len(values)} of {len(self[label])} seeds; {lost})"
        elif 0 < len(values) < len(self[label]):
            text = f"{text} ({len(self[label]) - len(values)} without a value)"
        return Text(text)

    def common_level(self, labels: Sequence[str]) -> float:
        """The highest whole percentage, less one point, that the validation accuracy of every
        completed run of `labels` reaches at some validation (as a fraction)."""
        tops = [max(h.val_acc) for label in labels for h in self[label] if h.completed]
        if not tops:
            return math.nan
        return (math.floor(100 * min(tops)) - 1) / 100

    def z_score(self, label: str, m: str | Metric, value: float) -> float:
        """How many standard deviations of the seeds `value` lies from their mean (NaN with one
        seed)."""
        v = self.per_seed(label, m)
        if len(v) < 2 or v.std() == 0:
            return math.nan
        return float((value - v.mean()) / v.std(ddof=1))

    def stop_reasons(self) -> set[str]:
        return {h.stop_reason for hs in self.values() for h in hs}

    def compare(self, a: str, b: str, m: str | Metric) -> Comparison:
        """Network a against network b in a metric, by the comparison rule."""
        return Comparison(self.per_seed(a, m), self.per_seed(b, m), (a, b), metric(m))

    def vs(self, a: str, b: str, m: str | Metric, p: bool = False) -> Text:
        """The means of network a and network b in a metric, '0.1380 against 0.2977', and with `p`
        the p-value of the comparison rule, '95.86 % against 91.67 % (p = 0.0011)' († with one
        seed): the evidence of a fixed sentence that Runs.check backs."""
        comparison = self.compare(a, b, m)
        return comparison.evidence() if p else comparison.means()

    def verdict(self, a: str, b: str, m: str | Metric) -> Text:
        """The comparison rule's verdict on network a against network b in a metric, in the
        metric's words with the means and the p-value: 'higher, 0.1426 against 0.1287 (p = 0.033)'
        or 'about the same, 0.1402 against 0.1411 (p = 0.81)' (see Comparison.phrase). For a
        sentence whose argument holds whichever way the test goes."""
        return self.compare(a, b, m).phrase()

    def check(self, a: str, b: str, claims: dict[str, tuple[str, str | Metric]]) -> None:
        """Back claims about network a against network b, each claim -> (what it states: "higher",
        "lower", "same", "not_higher" or "not_lower"; the metric), with the comparison rule. See
        check()."""
        notes = []
        for claim, (verdict, m) in claims.items():
            comparison = self.compare(a, b, m).expect(verdict)
            notes += _claim_notes(claim, comparison, "")
        _show_notes(notes)

    def table(
        self,
        columns: Sequence[str | Metric] | dict[str, str | Metric],
        labels: Sequence[str] | None = None,
        first: str = "network",
        seeds: bool = False,
    ) -> pd.DataFrame:
        """One row per network: its label (and number of seeds), then 'mean ± std' of every
        metric, headed by the metric's header (or by the dict's keys)."""
        if not isinstance(columns, dict):
            columns = {metric(m).header: m for m in columns}
        rows = []
        for label in labels or list(self):
            row = {first: label}
            if seeds:
                row["seeds"] = len(self[label])
            for header, m in columns.items():
                row[header] = self.cell(label, m)
            rows.append(row)
        return pd.DataFrame(rows)

    def before_after(
        self,
        changes: Sequence[tuple[str, str, str, str, Metric]],
        columns: Sequence[str | Metric],
    ) -> pd.DataFrame:
        """One row per change (trick, the network it is added on, the network without it, the
        network with it, the steps_to metric of its level): the means of the `columns` metrics,
        headed by their headers, and of the steps to the level, written 'before → after'."""
        columns = {metric(m).header: m for m in columns}
        rows = []
        for trick, on, before, after, to_level in changes:
            row = {"trick": trick, "on": on}
            for header, m in {**columns, "steps to level": to_level}.items():
                fmt = metric(m).fmt
                means = (self.mean(label, m) for label in (before, after))
                row[header] = " → ".join(format(x, fmt) if _finite(x) else "–" for x in means)
            rows.append(row)
        return pd.DataFrame(rows)


FINAL_METRICS = mlp.FINAL_METRICS  # the protocol's final table


# ---- the comparison rule and checked claims ------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    """A metric of network a against network b over their seeds, by Welch's t-test."""

    a: np.ndarray
    b: np.ndarray
    names: tuple[str, str] = ("a", "b")
    metric: Metric = dataclasses.field(default_factory=lambda: Metric(lambda h: 0.0, "value", ""))
    expected: str | None = None  # what a claim says of a against b: a key of BORNE_OUT_BY

    @property
    def testable(self) -> bool:
        return min(len(self.a), len(self.b)) >= 2

    @property
    def p(self) -> float:
        """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two seeds."""
        if not self.testable:
            return math.nan
        if self.a.std() == 0 and self.b.std() == 0:  # no spread at all: the means decide
            return 1.0 if self.a.mean() == self.b.mean() else 0.0
        from scipy.stats import ttest_ind

        with warnings.catch_warnings():  # values equal to many digits (accuracies of 100 %)
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(ttest_ind(self.a, self.b, equal_var=False).pvalue)

    @property
    def verdict(self) -> str | None:
        """'higher' or 'lower' (a against b) when p < ALPHA, 'same' otherwise, None untestable."""
        if not self.testable:
            return None
        if self.p >= ALPHA:
            return "same"
        return "higher" if self.a.mean() > self.b.mean() else "lower"

    @property
    def holds(self) -> bool:
        """Whether the verdict bears out what the claim states (see BORNE_OUT_BY)."""
        return self.expected is not None and self.verdict in BORNE_OUT_BY[self.expected]

    def expect(self, claim: str) -> Comparison:
        """This comparison as the evidence of a claim that states `claim` of a against b:
        "higher", "lower", "same", or the one-sided "not_higher" and "not_lower"."""
        if claim not in BORNE_OUT_BY:
            raise ValueError(f"a claim states one of {CLAIM_KINDS}, got {claim!r}")
        return dataclasses.replace(self, expected=claim)

    def means(self) -> Text:
        """The two means in the metric's format and unit: '0.1380 against 0.2977'."""
        mean_a, mean_b = (self.metric.text(_mean(v)) for v in (self.a, self.b))
        return Text(f"{mean_a} against {mean_b}")

    def phrase(self) -> Text:
        """The verdict in the metric's words (Metric.comparatives), the means and the p-value, for
        the running text: 'larger, 0.0222 against 0.0041 (p = 0.021)', 'about the same, 0.1402
        against 0.1411 (p = 0.81)'. The one place that words a verdict. With one seed nothing is
        tested: the word follows the means and the † of untested claims takes the p-value's place,
        'earlier, 20,750 against 21,250 (†)'."""
        words = dict(zip(("higher", "lower", "same"), self.metric.comparatives))
        if self.testable:
            return Text(f"{words[self.verdict]}, {self.evidence()}")
        mean_a, mean_b = _mean(self.a), _mean(self.b)
        if not (_finite(mean_a) and _finite(mean_b)):
            return self.evidence()  # a network without a completed run
        by_means = "higher" if mean_a > mean_b else "lower" if mean_a < mean_b else "same"
        return Text(f"{words[by_means]}, {self.evidence()}")

    def evidence(self) -> Text:
        """The means and the p-value, '0.1426 against 0.1287 (p = 0.033)'; with one seed the
        † of untested claims instead of the p-value."""
        tested = p_value(self.p) if self.testable else UNTESTABLE
        return Text(f"{self.means()} ({tested})")

    def __str__(self) -> str:
        m = self.metric
        mean_a = m.text(self.a.mean()) if self.a.size else "no run"
        mean_b = m.text(self.b.mean()) if self.b.size else "no run"
        means = f"{m.words} {mean_a} ({self.names[0]}) against {mean_b} ({self.names[1]})"
        if not self.testable:
            return means
        return f"{means}, Welch's {p_value(self.p)}"


BORNE_OUT_BY = {  # what a claim states of a against b: the verdicts of the rule that bear it out
    "higher": ("higher",),
    "lower": ("lower",),
    "same": ("same",),
    "not_higher": ("same", "lower"),  # holds whichever way a test near the threshold goes
    "not_lower": ("same", "higher"),
}
CLAIM_KINDS = ", ".join(repr(kind) for kind in BORNE_OUT_BY)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def p_value(p: float) -> Text:
    """A p-value for the text, to two significant digits: 'p = 0.021', 'p = 0.41', 'p < 0.001'."""
    if p < 0.001:
        return Text(f"p{NBSP}<{NBSP}0.001")
    return Text(f"p{NBSP}={NBSP}{sig(p, 2)}")


def compare(a, b, name_a: str = "a", name_b: str = "b", m: str | Metric | None = None):
    """Compare two sets of per-seed values with the one rule (see COMPARISON_RULE)."""
    m = metric(m) if m is not None else Metric(lambda h: 0.0, "value", "")
    values = (np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return Comparison(values[0], values[1], (name_a, name_b), m)


class ClaimNotSupported(AssertionError):
    """Raised under MLP_STRICT when the runs do not support a claim of the report."""


def check(claim: str, evidence: Comparison | bool | None, detail: str = "") -> None:
    """Back a sentence of the report with the runs. A claim that holds shows nothing. One that
    does not shows a visible note (listed by the report build; an error under MLP_STRICT). A
    Comparison that one seed per network cannot decide shows a compact mark instead.
    `evidence` is a Comparison with an expected verdict (Runs.check builds those), a bool, or
    None for a claim these runs cannot test (one seed: no spread), which is marked as such."""
    _show_notes(_claim_notes(claim, evidence, detail))


VERDICT_WORDS = {  # how the name of a claim words what it states
    "higher": "higher than",
    "lower": "lower than",
    "same": "about the same as",
    "not_higher": "not higher than",
    "not_lower": "not lower than",
}


def claims(
    a: str, b: str, **verdicts: Sequence[str | Metric]
) -> dict[str, tuple[str, str | Metric]]:
    """The claims of Runs.check worded from the metric table: the metrics grouped by the verdict
    each claim states of network a against network b (keywords higher, lower, same, not_higher,
    not_lower), `a` and `b` as the text names them. claims("3a", "the baseline",
    lower=["val_loss"]) gives {"3a: final validation loss lower than for the baseline": ("lower",
    "val_loss")}."""
    worded = {}
    for verdict, metrics in verdicts.items():
        if verdict not in VERDICT_WORDS:
            raise ValueError(f"a claim states one of {CLAIM_KINDS}, got {verdict!r}")
        for m in metrics:
            claim = f"{a}: {metric(m).words} {VERDICT_WORDS[verdict]} for {b}"
            worded[claim] = (verdict, m)
    return worded


def _claim_notes(claim: str, evidence: Comparison | bool | None, detail: str) -> list[dict]:
    if evidence is None:
        return [{"claim": claim, "detail": detail, "untestable": True}]
    if isinstance(evidence, Comparison):
        if evidence.expected is None:
            raise ValueError("a Comparison used as evidence needs the verdict: .expect('higher')")
        if not evidence.testable:
            return [{"claim": claim, "detail": str(evidence), "untestable": True}]
        holds = evidence.holds
        detail = detail or str(evidence)
    else:
        holds = bool(evidence)
    if holds:
        return []
    if strict_mode():
        detail_text = f" ({detail})" if detail else ""
        raise ClaimNotSupported(f"claim not supported by these runs: {claim!r}{detail_text}")
    return [{"claim": claim, "detail": detail, "untestable": False}]


def _show_notes(notes: list[dict]) -> None:
    """Display unsupported claims as notes, and untestable ones as one compact marked line."""
    from IPython.display import Markdown, display

    for note in notes:
        if note["untestable"]:
            continue
        detail = f" ({note['detail']})" if note["detail"] else ""
        text = f"> ⚠ **Not supported by these runs:** {note['claim']}{detail}."
        display(Markdown(text), metadata={"mlp_claim": note})
    untestable = [note for note in notes if note["untestable"]]
    if untestable:
        claims = "; ".join(note["claim"] for note in untestable)
        subjects = {note["claim"].split(": ", 1)[0] for note in untestable}
        if len(subjects) == 1 and all(": " in note["claim"] for note in untestable):
            rest = "; ".join(note["claim"].split(": ", 1)[1] for note in untestable)
            claims = f"{subjects.pop()}: {rest}"  # one subject, named once
        text = f"<small>{UNTESTABLE} Not tested with one seed: {claims}.</small>"
        display(Markdown(text), metadata={"mlp_claims_untestable": untestable})


def seed_note(exps: Experiments) -> None:
    """Display how a notebook's networks were run when that changes how to read it: with one
    seed (differences cannot be tested) or in smoke mode. A normal build shows nothing."""
    from IPython.display import Markdown, display

    lines = []
    if len(exps.seeds) == 1:
        lines.append(
            f"*This build trains every network with one seed ({exps.seeds[0]}), so there is no "
            f"spread between seeds to judge a difference against: claims that two networks "
            f"differ are not tested and are marked {UNTESTABLE} where they are checked, and a "
            f"verdict in the text follows the means alone, with ({UNTESTABLE}) in place of its "
            f"p-value.*"
        )
    if smoke_mode():
        config = next(iter(exps.networks.values()))
        lines.append(
            f"**Smoke build: every run uses {config.n_train:,} training images and "
            f"{config.max_epochs} epochs, so the numbers are not the protocol's.**"
        )
    if lines:
        display(Markdown("\n>\n".join(f"> {line}" for line in lines)))  # a note, like the claims


# ---- tables --------------------------------------------------------------------------------------


def _html_math(text: str) -> str:
    """Simple LaTeX math ($W_{11}$, $1.5 \\times 10^{-8}$) in HTML-escaped text, as HTML."""

    def convert(m: re.Match) -> str:
        s = m.group(1)
        for tex, sign in (("\\times", "×"), ("\\pm", "±"), ("\\cdot", "·"), ("-", "−")):
            s = s.replace(tex, sign)
        s = re.sub(r"\s*([×±·])\s*", "\u2009\\1\u2009", s)  # thin spaces around operators

        def script(t: re.Match) -> str:
            tag = "sub" if (t.group(1) or t.group(3)) == "_" else "sup"
            return f"<{tag}>{t.group(2) or t.group(4)}</{tag}>"

        s = re.sub(r"([_^])\{([^}]*)\}|([_^])(\w)", script, s)
        return f'<span class="mlp-math">{s}</span>'

    return re.sub(r"\$([^$]+)\$", convert, text)


class Table:
    """A DataFrame that displays as a real table: booktabs LaTeX in the PDF, an HTML table in the
    HTML report, both rendered by pandas' Styler. Its caption is the Markdown paragraph above it
    ("**Table 2.2:** ..."). `formats` gives a format spec per numeric column; text columns are
    left-aligned, numbers right-aligned; cells and headers may hold simple LaTeX math."""

    def __init__(self, df: pd.DataFrame, formats: dict[str, str] | None = None):
        self.df = df.reset_index(drop=True)
        self.formats = formats or {}

    def _is_text(self, column: str) -> bool:
        """Words are left-aligned; numbers, 'mean ± std' and math right-aligned."""
        for v in self.df[column]:
            if isinstance(v, str) and re.search(r"[A-Za-z]", re.sub(r"\$[^$]*\$", "", v)):
                return True
        return False

    def _styler(self, target: str):
        def cell(column: str) -> Callable:
            spec = self.formats.get(column)

            def render(v) -> str:
                is_number = isinstance(v, (int, float, np.number))
                text = format(v, spec) if spec and is_number else powers_as_math(str(v))
                return _html_math(html.escape(text)) if target == "html" else text

            return render

        escape = "latex-math" if target == "latex" else None
        header = (lambda h: _html_math(html.escape(str(h)))) if target == "html" else None
        formats = {c: cell(c) for c in self.df.columns}
        styler = self.df.style.hide(axis="index").format(formats, escape=escape, na_rep="–")
        uuid = hashlib.sha1(repr(list(self.df.columns)).encode()).hexdigest()[:8]
        return styler.set_uuid(uuid).format_index(header, escape=escape, axis=1)

    def _repr_latex_(self) -> str:
        align = "".join("l" if self._is_text(c) else "r" for c in self.df.columns)
        latex = self._styler("latex").to_latex(hrules=True, column_format=align)
        return (
            "\\begin{center}\\begin{adjustbox}{max width=\\linewidth}\n"
            + latex
            + "\\end{adjustbox}\\end{center}"
        )

    def _repr_html_(self) -> str:
        styles = [
            {"selector": f"td.col{i}, th.col_heading.col{i}", "props": "text-align: left"}
            for i, c in enumerate(self.df.columns)
            if self._is_text(c)
        ]
        styler = self._styler("html").set_table_styles(styles)
        return styler.set_table_attributes('class="mlp-table"').to_html()

    def __repr__(self) -> str:
        return self.df.to_string(index=False)


# ---- notebook setup ------------------------------------------------------------------------------


def setup_notebook(font_size: float = 10.0) -> None:
    """Display settings for a task notebook, applied when called (never on import): vector
    figures (SVG in HTML, PDF in the LaTeX report), readable fonts, tight bounding boxes."""
    import logging

    import matplotlib as mpl
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("svg", "pdf")
    mpl.rcParams.update(
        {
            "figure.figsize": (7.5, 3.6),
            "font.size": font_size,
            "axes.titlesize": font_size + 1,
            "legend.fontsize": font_size - 1.5,
            "legend.framealpha": 0.85,
            "figure.dpi": 100,
            "savefig.bbox": "tight",
            "svg.fonttype": "none",
            "pdf.fonttype": 42,
            "mathtext.fontset": "dejavusans",
        }
    )
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # no font-subsetting chatter


# ---- analyses of networks ------------------------------------------------------------------------


def equal_width_for_budget(budget: int, n_hidden: int = 2) -> tuple[int, int]:
    """The width h of `n_hidden` equal hidden layers whose parameter count is closest to `budget`
    (ties go to the smaller h), and that count."""
    if budget <= 0 or n_hidden <= 0:
        raise ValueError(f"budget and n_hidden must be positive, got {budget} and {n_hidden}")
    counts = {}
    for h in range(1, budget + 1):
        counts[h] = mlp.count_parameters([h] * n_hidden + [mlp.NUM_CLASSES])
        if counts[h] > 2 * budget:
            break
    best = min(counts, key=lambda h: (abs(counts[h] - budget), h))
    return best, counts[best]


def initialisation_stats(config: mlp.RunConfig, X: np.ndarray, val: mlp.Split) -> dict:
    """The first hidden layer of the network train(config) starts from, on the inputs X: spread
    of the pre-activations z, mean and spread of f(z), mean slope relative to f'(0), the share of
    saturated units (slope below f'(0)/10, in %) and the validation loss before any update."""
    model = mlp.initial_model(config)
    _, slope = mlp.ACTIVATIONS[config.activation]
    a = model.hidden_outputs(X)[0]
    s = slope(a)
    s0 = slope_at_zero(config.activation)
    return {
        "std z": float((X @ model.weights[0]).std()),
        "mean f": float(a.mean()),
        "std f": float(a.std()),
        "slope": float(s.mean() / s0),
        "saturated": 100 * float((s < 0.1 * s0).mean()),
        "val loss": mlp.evaluate(model, val)[0],
    }


def initialisation_table(config: mlp.RunConfig, X: np.ndarray, val: mlp.Split) -> pd.DataFrame:
    """initialisation_stats of the network `config` starts from with every activation and every
    initialisation (activation, then weights, in the order of mlp_core's tables), one row each."""
    rows = []
    for activation in mlp.ACTIVATIONS:
        for init in mlp.INITIALISATIONS:
            stats = initialisation_stats(config.replace(activation=activation, init=init), X, val)
            names = {"activation": activation.replace("_", " "), "weights": init.replace("_", "-")}
            rows.append({**names, **stats})
    return pd.DataFrame(rows)


INITIALISATION_FORMATS = {  # the columns of initialisation_table in a table
    "std z": ".2f",
    "mean f": ".3f",
    "std f": ".3f",
    "slope": ".3f",
    "saturated": ".1f",
    "val loss": ".3f",
}


def mean_slope(config: mlp.RunConfig, X: np.ndarray) -> tuple[float, float]:
    """The mean slope f'(z) over every hidden unit of the network train(config) starts from, on
    the inputs X, and the slope f'(0) at the origin."""
    model = mlp.initial_model(config.replace(dtype="float64"))
    _, slope = mlp.ACTIVATIONS[config.activation]
    slopes = [slope(a).mean() for a in model.hidden_outputs(X.astype(np.float64))]
    return float(np.mean(slopes)), slope_at_zero(config.activation)


def slope_at_zero(activation: str) -> float:
    """f'(0), the largest slope of an activation of mlp_core.ACTIVATIONS."""
    f, slope = mlp.ACTIVATIONS[activation]
    return float(slope(f(np.zeros(1)))[0])


def width_table(budget: int, width: int, n_hidden: int = 2) -> pd.DataFrame:
    """The parameter counts of `n_hidden` equal hidden layers of the chosen `width` and of its two
    neighbours, and their distance from the budget (Task 4d)."""
    rows = []
    for h in (width - 1, width, width + 1):
        params = mlp.count_parameters([h] * n_hidden + [mlp.NUM_CLASSES])
        rows.append(
            {
                "h": h,
                "formula": f"{mlp.INPUT_SIZE}·{h} + {h}² + {mlp.NUM_CLASSES}·{h}",
                "params(h)": count(params),
                f"|params(h) − {budget:,}|": count(abs(params - budget)),
                "chosen": "yes" if h == width else "",
            }
        )
    return pd.DataFrame(rows)


def gradient_check_table(errors: dict[str, float], layer_sizes: Sequence[int], epsilon: float):
    """One row per activation: the network checked, its number of weights, the largest error of
    the gradient check (activation -> error), the bound epsilon² and how far below it the error
    lies."""
    rows = []
    for activation, error in errors.items():
        rows.append(
            {
                "activation": activation.replace("_", " "),
                "network": " → ".join(map(str, [mlp.INPUT_SIZE, *layer_sizes])),
                "weights checked": count(mlp.count_parameters(layer_sizes)),
                "largest error": sci(error),
                "bound": sci(epsilon**2, 1),
                "bound / error": num(epsilon**2 / error, 1),
            }
        )
    return pd.DataFrame(rows)


GRADIENT_TIMES = {"init": "at initialisation", "training": "during training (median)"}


def gradient_ratio_table(ratios: dict[tuple[str, str], np.ndarray], n_weights: int):
    """One row per (network, "init" or "training"): 'mean ± std' over the seeds of W1/WL and
    W2/W(L-1) of networks with L = `n_weights` weight matrices (`ratios` holds them per seed, as
    gradient_ratios gives them), and of the factor per layer by which the gradient changes from
    one hidden layer to the one below, (W2/W(L-1)) to the power 1/(L-3)."""
    rows = []
    for (label, when), r in ratios.items():
        rows.append(
            {
                "network": label,
                "when": GRADIENT_TIMES[when],
                f"$W_1 / W_{{{n_weights}}}$": mean_std_sig(r[:, 0]),
                f"$W_2 / W_{{{n_weights - 1}}}$": mean_std_sig(r[:, 1]),
                "factor per layer": mean_std_sig(r[:, 1] ** (1 / (n_weights - 3))),
            }
        )
    return pd.DataFrame(rows)


def gradient_ratios(h: mlp.History, when: str) -> tuple[float, float]:
    """Input side over output side of a run's per-layer gradient norms, W1/WL and W2/W(L-1): at
    initialisation (`when` "init") or the median over its validations ("training")."""
    n = np.asarray(h.init_grad_norms if when == "init" else h.grad_norms, dtype=float)
    return float(np.median(n[..., 0] / n[..., -1])), float(np.median(n[..., 1] / n[..., -2]))


def first_step_below(h: mlp.History, loss: float) -> float:
    """The first validation step with a validation loss below `loss` (NaN if none)."""
    return next((float(s) for s, v in zip(h.val_steps, h.val_loss) if v < loss), math.nan)


def val_jitter(h: mlp.History, skip: int) -> float:
    """Mean absolute change of the validation loss between consecutive validations, after
    `skip`."""
    v = np.asarray(h.val_loss[skip:])
    return float(np.abs(np.diff(v)).mean()) if len(v) > 1 else math.nan
