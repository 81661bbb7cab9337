"""The report layer the task notebooks share: their settings, experiments, statistics and tables.

* Settings from the environment: smoke mode ($MLP_SMOKE: tiny runs for tests), the number of seeds
  ($MLP_SEEDS, default 3) and strict claims ($MLP_STRICT). Unknown values are errors.
* Experiments: `experiments({label: RunConfig})` expands a notebook's networks over the seeds (and
  to smoke size); `run(...)` trains or loads them through mlp_runs and returns a `Runs` table of
  histories with per-seed metrics.
* The one comparison rule: two networks differ in a metric when Welch's t-test over their seeds
  gives p < 0.05; otherwise they are the same. `check(claim, comparison)` backs a sentence of the
  report with it: a claim the runs do not support gets a visible note (and fails under MLP_STRICT).
* Number formatting (mean ± std, scientific notation) and `Table`, which renders a DataFrame as a
  real table in the PDF (LaTeX, booktabs) and in the HTML report, through pandas' Styler.
* Analyses a task computes from a network rather than from its history (Tables 3.4 and 4.5).
Plots live in mlp_plots.py; the ML itself in mlp_core.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import math
import os
import re
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import mlp_core as mlp
import mlp_runs

ALPHA = 0.05  # significance level of the comparison rule
COMPARISON_RULE = (
    f"Two networks are said to differ in a metric when Welch's t-test over their seeds gives "
    f"p < {ALPHA:g} (two-sided); otherwise they are called the same. With one seed per network "
    f"no difference can be established."
)
SMOKE_SETTINGS = dict(
    n_train=2000, n_val=2000, max_epochs=2
)  # what smoke mode changes in every run
PCT = "\u00a0%"  # a percent sign that never starts a line


# ---- settings from the environment -----------------------------------------------------------------


def env_flag(name: str) -> bool:
    """A yes/no environment variable: unset, '', 0, false, no, off are no; 1, true, yes, on are yes."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(
        f"{name}={os.environ[name]!r} is not understood: use 1 (or true, yes, on) to switch it on, "
        f"0 (or false, no, off, or unset) to switch it off"
    )


def smoke_mode() -> bool:
    """$MLP_SMOKE: notebooks run a tiny version of every experiment (tests, CI)."""
    return env_flag("MLP_SMOKE")


def strict_mode() -> bool:
    """$MLP_STRICT: a claim the runs do not support is an error instead of a note."""
    return env_flag("MLP_STRICT")


def n_seeds(default: int = 3) -> int:
    """Seeds per network: $MLP_SEEDS if set (`make report SEEDS=1`), else 1 in smoke mode, else `default`."""
    value = os.environ.get("MLP_SEEDS", "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"MLP_SEEDS must be a positive integer, got {value!r}")
    return int(value) if value else 1 if smoke_mode() else default


# ---- experiments and their runs -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiments:
    """A notebook's networks (label -> RunConfig named by its label) and the seeds each is run with."""

    networks: dict[str, mlp.RunConfig]
    seeds: tuple[int, ...]

    def configs(self) -> list[mlp.RunConfig]:
        return [c.replace(seed=s) for c in self.networks.values() for s in self.seeds]


def experiments(
    networks: dict[str, mlp.RunConfig], seeds: Sequence[int] | None = None
) -> Experiments:
    """The networks of a notebook, each named by its label, shrunk in smoke mode, over n_seeds() seeds."""
    smoke = SMOKE_SETTINGS if smoke_mode() else {}
    return Experiments(
        {label: c.replace(name=label, **smoke) for label, c in networks.items()},
        tuple(seeds) if seeds is not None else tuple(range(n_seeds())),
    )


def run(exps: Experiments, **kwargs) -> Runs:
    """Train or load every run of `exps` (see mlp_runs.run_experiments) as a Runs table."""
    histories = mlp_runs.run_experiments(exps.configs(), **kwargs)
    return Runs(
        {label: [h for h in histories if h.config.name == label] for label in exps.networks}
    )


def _ms_per_epoch(h: mlp.History) -> float:
    return 1000 * float(np.median(h.step_times)) if h.step_times else math.nan


METRICS: dict[str, Callable[[mlp.History], float]] = {
    "train_loss": lambda h: h.final["train_loss"],
    "val_loss": lambda h: h.final["val_loss"],
    "train_acc": lambda h: 100 * h.final["train_acc"],  # %
    "val_acc": lambda h: 100 * h.final["val_acc"],  # %
    "gap": lambda h: 100 * (h.final["train_acc"] - h.final["val_acc"]),  # percentage points
    "best_val_loss": lambda h: h.best_val_loss,
    "best_step": lambda h: h.best_step,
    "steps": lambda h: h.steps,
    "rise": lambda h: (
        h.final["val_loss"] - h.best_val_loss
    ),  # validation loss gained after its lowest
    "ms_per_epoch": _ms_per_epoch,  # training steps of an epoch, median
}


def steps_to(accuracy: float) -> Callable[[mlp.History], float]:
    """A metric: the first validation step at which the validation accuracy reaches `accuracy` (NaN if never)."""

    def metric(h: mlp.History) -> float:
        reached = np.flatnonzero(np.asarray(h.val_acc) >= accuracy)
        return float(h.val_steps[reached[0]]) if reached.size else math.nan

    metric.__qualname__ = f"steps to {100 * accuracy:.0f} %"
    return metric


class Runs(dict):
    """label -> the histories of that network, one per seed. Metrics are computed over the runs that
    completed (a diverged or interrupted run is left out, and `mean_std` says so)."""

    def first(self, label: str) -> mlp.History:
        """The run of the first seed, the one the figures show."""
        return self[label][0]

    def per_seed(self, label: str, metric: str | Callable) -> np.ndarray:
        f = METRICS[metric] if isinstance(metric, str) else metric
        values = np.array([f(h) for h in self[label] if h.completed], dtype=float)
        return values[~np.isnan(values)]

    def mean(self, label: str, metric: str | Callable) -> float:
        values = self.per_seed(label, metric)
        return float(values.mean()) if values.size else math.nan

    def mean_std(self, label: str, metric: str | Callable, fmt: str = ".4f") -> str:
        """'mean ± std' over the seeds, naming the runs left out (failed, or never reaching a level)."""
        values, failed = self.per_seed(label, metric), self.failures(label)
        missing = len(self[label]) - sum(failed.values()) - len(values)
        if not values.size:
            return "–"
        return mean_std(
            values, fmt, failed=dict(failed, **({"without a value": missing} if missing else {}))
        )

    def common_level(self, labels: Sequence[str]) -> float:
        """The highest whole percentage, less one point, that the validation accuracy of every run of
        `labels` reaches at some validation (as a fraction): a level all of them can be timed to."""
        top = min(max(h.val_acc) for label in labels for h in self[label])
        return (math.floor(100 * top) - 1) / 100

    def against(
        self, a: str, b: str, metric: str | Callable, fmt: str = ".4f", unit: str = ""
    ) -> str:
        """'0.1380 against 0.2977': the mean of network a against network b's, for running text."""
        return f"{self.mean(a, metric):{fmt}}{unit} against {self.mean(b, metric):{fmt}}{unit}".replace(
            "-", "−"
        )

    def versus(self, a: str, b: str, metrics: Sequence[str]) -> str:
        """'training loss 0.0254 against 0.0018, validation accuracy 96.90 % against 96.33 %, ...':
        several metrics of network a against network b's, in the words and formats of WORDS."""
        return ", ".join(f"{WORDS[m][0]} {self.against(a, b, m, *WORDS[m][1:])}" for m in metrics)

    def check(self, a: str, b: str, claims: dict[str, tuple[str, str | Callable]]) -> None:
        """Back claims about network a against network b, each claim -> (expected verdict: "higher",
        "lower" or "same"; metric), with the comparison rule (see check())."""
        for claim, (verdict, metric) in claims.items():
            check(claim, self.compare(a, b, metric).expect(verdict))

    def z_score(self, label: str, metric: str | Callable, value: float) -> float:
        """How many standard deviations of the seeds `value` lies from their mean (NaN with one seed)."""
        v = self.per_seed(label, metric)
        return float((value - v.mean()) / v.std(ddof=1)) if len(v) > 1 and v.std() > 0 else math.nan

    def span(self, label: str, metric: str | Callable, fmt: str = ",.0f") -> str:
        """'lowest–highest' of a metric over the seeds, as formatted ('26,376–29,626'), or one value."""
        values = [
            format(v, fmt)
            for v in (self.per_seed(label, metric).min(), self.per_seed(label, metric).max())
        ]
        return values[0] if values[0] == values[1] else "–".join(values)

    def failures(self, label: str) -> dict[str, int]:
        """How many runs of `label` did not complete, by reason."""
        return dict(
            pd.Series(
                [h.stop_reason for h in self[label] if not h.completed], dtype=object
            ).value_counts()
        )

    def compare(self, a: str, b: str, metric: str | Callable) -> Comparison:
        return compare(self.per_seed(a, metric), self.per_seed(b, metric), a, b, metric)

    def higher(self, a: str, b: str, metric: str | Callable) -> Comparison:
        return self.compare(a, b, metric).expect("higher")

    def lower(self, a: str, b: str, metric: str | Callable) -> Comparison:
        return self.compare(a, b, metric).expect("lower")

    def same(self, a: str, b: str, metric: str | Callable) -> Comparison:
        return self.compare(a, b, metric).expect("same")

    def stop_reasons(self) -> set[str]:
        return {h.stop_reason for hs in self.values() for h in hs}

    def table(
        self,
        columns: dict[str, tuple[str | Callable, str]],
        labels: Sequence[str] | None = None,
        first: str = "network",
        seeds: bool = False,
    ) -> pd.DataFrame:
        """One row per network: its label (and number of seeds), then 'mean ± std' of each column's
        (metric, format)."""
        rows = []
        for label in labels or list(self):
            row = {first: label, **({"seeds": len(self[label])} if seeds else {})}
            row.update(
                {col: self.mean_std(label, metric, fmt) for col, (metric, fmt) in columns.items()}
            )
            rows.append(row)
        return pd.DataFrame(rows)


# How running text names a metric of METRICS, with its format and unit (for Runs.versus).
WORDS = {
    "train_loss": ("training loss", ".4f", ""),
    "val_loss": ("final validation loss", ".4f", ""),
    "train_acc": ("training accuracy", ".2f", PCT),
    "val_acc": ("validation accuracy", ".2f", PCT),
    "gap": ("accuracy gap", ".2f", " points"),
    "best_val_loss": ("lowest validation loss", ".4f", ""),
    "best_step": ("lowest validation loss at step", ",.0f", ""),
    "rise": ("rise after the minimum", ".4f", ""),
    "ms_per_epoch": ("an epoch of training steps", ".1f", " ms"),
}
FINAL_COLUMNS = {
    "train loss": ("train_loss", ".4f"),
    "val loss": ("val_loss", ".4f"),
    "train acc (%)": ("train_acc", ".2f"),
    "val acc (%)": ("val_acc", ".2f"),
}


# ---- the comparison rule and checked claims ----------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    """Metric `metric` of network a against network b over their seeds, by Welch's t-test."""

    a: np.ndarray
    b: np.ndarray
    names: tuple[str, str] = ("a", "b")
    metric: str = ""
    expected: str | None = None  # "higher", "lower" or "same": what a claim says of a against b

    @property
    def p(self) -> float:
        """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two seeds."""
        if min(len(self.a), len(self.b)) < 2:
            return math.nan
        if self.a.std() == 0 and self.b.std() == 0:  # no spread at all: the means decide
            return 1.0 if self.a.mean() == self.b.mean() else 0.0
        import warnings

        from scipy.stats import ttest_ind

        with (
            warnings.catch_warnings()
        ):  # values equal to many digits (accuracies of 100 %) are fine
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(ttest_ind(self.a, self.b, equal_var=False).pvalue)

    @property
    def verdict(self) -> str | None:
        """'higher' or 'lower' (a against b) when p < ALPHA, 'same' otherwise, None with one seed."""
        if math.isnan(self.p):
            return None
        return "same" if self.p >= ALPHA else "higher" if self.a.mean() > self.b.mean() else "lower"

    @property
    def holds(self) -> bool:
        return self.expected is not None and self.verdict == self.expected

    def expect(self, verdict: str) -> Comparison:
        return dataclasses.replace(self, expected=verdict)

    def __str__(self) -> str:
        means = (
            f"mean {self.a.mean():.4g} against {self.b.mean():.4g}"
            if self.a.size and self.b.size
            else "no runs"
        )
        test = (
            f"Welch's t-test p = {self.p:.2g}"
            if not math.isnan(self.p)
            else f"{min(len(self.a), len(self.b))} run(s) per network, too few to test"
        )
        return f"{self.metric} of {self.names[0]} against {self.names[1]}: {means}, {test}"


def compare(
    a: Sequence[float],
    b: Sequence[float],
    name_a: str = "a",
    name_b: str = "b",
    metric: str | Callable = "",
) -> Comparison:
    """Compare the per-seed values of two networks with the one rule (see COMPARISON_RULE)."""
    metric = metric if isinstance(metric, str) else getattr(metric, "__qualname__", "metric")
    return Comparison(
        np.asarray(a, dtype=float), np.asarray(b, dtype=float), (name_a, name_b), metric
    )


class ClaimNotSupported(AssertionError):
    """Raised by check() under MLP_STRICT when the runs do not support a claim of the report."""


def check(claim: str, evidence: Comparison | bool, detail: str = "") -> None:
    """Back a sentence of the report with the runs. A claim that holds shows nothing; one that does not
    shows a visible note beside the text (and is listed by the report build), or raises
    ClaimNotSupported under MLP_STRICT. `evidence` is a Comparison with an expected verdict, or a bool."""
    holds = evidence.holds if isinstance(evidence, Comparison) else bool(evidence)
    detail = detail or (str(evidence) if isinstance(evidence, Comparison) else "")
    if holds:
        return
    if strict_mode():
        raise ClaimNotSupported(
            f"claim not supported by these runs: {claim!r}" + (f" ({detail})" if detail else "")
        )
    from IPython.display import Markdown, display

    note = f"**Not supported by these runs:** {claim}" + (f" ({detail})." if detail else ".")
    display(Markdown(f"> ⚠ {note}"), metadata={"mlp_claim": {"claim": claim, "detail": detail}})


# ---- number formatting ---------------------------------------------------------------------------------


def mean_std(
    values: Sequence[float], fmt: str = ".4f", failed: dict[str, int] | None = None
) -> str:
    """'mean ± std' (sample standard deviation) in format `fmt`; the plain value for one run; '–' for
    none. Runs left out (`failed`: reason -> count) are named: '0.1402 (2 of 3 seeds; 1 diverged)'."""
    v = np.asarray(values, dtype=float)
    text = (
        "–"
        if not v.size
        else format(v[0], fmt)
        if v.size == 1
        else (f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}")
    )
    if failed:
        lost = "; ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in failed.items())
        text += f" ({v.size} of {v.size + sum(failed.values())} seeds; {lost})"
    return text.replace("-", "−")


def mean_std_sig(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± std' with the mean to `digits` significant digits and the std to as many decimals."""
    v = np.asarray(values, dtype=float)
    decimals = (
        max(0, digits - 1 - math.floor(math.log10(abs(v.mean())))) if v.mean() else digits - 1
    )
    return mean_std(v, f".{decimals}f")


def sci(x: float, digits: int = 3) -> str:
    """x in scientific notation as LaTeX math, '$1.45 \\times 10^{-8}$': for Markdown text and for Table
    cells alike (the PDF typesets it, the HTML table shows 1.45 × 10<sup>−8</sup>)."""
    if x == 0 or not math.isfinite(x):
        return f"${x:g}$"
    exponent = math.floor(math.log10(abs(x)))
    mantissa = f"{x / 10**exponent:.{digits - 1}f}"
    return (
        f"${mantissa} \\times 10^{{{exponent}}}$"
        if mantissa not in ("1", "1.0", "1.00")
        else f"$10^{{{exponent}}}$"
    )


def tex_int(n: int) -> str:
    """An integer with thousands separators for LaTeX math: 50{,}880 (no space after the comma)."""
    return f"{n:,}".replace(",", "{,}")


def seeds_note(n: int) -> str:
    """'mean ± standard deviation over 3 seeds' or 'one seed', for captions."""
    return f"mean ± standard deviation over {n} seeds" if n > 1 else "one seed"


def runs_note(exps: Experiments) -> str:
    """How a notebook's networks were run, for its opening: seeds, what tables and figures show, and
    a warning in smoke mode."""
    n, seeds = len(exps.seeds), ", ".join(map(str, exps.seeds))
    text = (
        f"Every network here is trained with {n} seeds ({seeds}): tables give the mean ± standard deviation "
        f"over the seeds, figures show the run of seed {exps.seeds[0]}."
        if n > 1
        else f"Every network here is trained with one seed ({seeds}), so there is no spread between seeds to judge "
        f"differences against: claims that two networks differ are marked as not supported."
    )
    smoke = next(iter(exps.networks.values()))
    return text + (
        f" **Smoke build: every run uses {smoke.n_train:,} training images and {smoke.max_epochs} "
        f"epochs, so the numbers are not the protocol's.**"
        if smoke_mode()
        else ""
    )


# ---- tables ---------------------------------------------------------------------------------------------


def _html_math(text: str) -> str:
    """Simple LaTeX math ($W_{11}$, $1.5 \\times 10^{-8}$) in HTML-escaped text as HTML."""

    def convert(m: re.Match) -> str:
        s = (
            m.group(1)
            .replace("\\times", "×")
            .replace("\\pm", "±")
            .replace("\\cdot", "·")
            .replace("-", "−")
        )
        s = re.sub(r"\s*([×±·])\s*", "\u2009\\1\u2009", s)  # thin spaces around operators
        s = re.sub(
            r"([_^])\{([^}]*)\}|([_^])(\w)",
            lambda t: "<{0}>{1}</{0}>".format(
                "sub" if (t.group(1) or t.group(3)) == "_" else "sup", t.group(2) or t.group(4)
            ),
            s,
        )
        return f'<span class="mlp-math">{s}</span>'

    return re.sub(r"\$([^$]+)\$", convert, text)


class Table:
    """A DataFrame with a numbered caption that displays as a real table: booktabs LaTeX in the PDF,
    an HTML table in the HTML report, both rendered by pandas' Styler. `formats` gives a format spec per
    numeric column; text columns are left-aligned, numbers right-aligned; cells and headers may hold
    simple LaTeX math ($W_{1}$, sci())."""

    def __init__(self, df: pd.DataFrame, caption: str, formats: dict[str, str] | None = None):
        self.df, self.caption, self.formats = df.reset_index(drop=True), caption, formats or {}

    def _is_text(self, column: str) -> bool:
        """Words are left-aligned; numbers, 'mean ± std' and sci() values right-aligned."""
        return any(
            isinstance(v, str) and re.search(r"[A-Za-z]", re.sub(r"\$[^$]*\$", "", v))
            for v in self.df[column]
        )

    def _styler(self, target: str):
        def cell(column: str) -> Callable:
            spec = self.formats.get(column)

            def render(v) -> str:
                text = (
                    format(v, spec) if spec and isinstance(v, (int, float, np.number)) else str(v)
                )
                return _html_math(html.escape(text)) if target == "html" else text

            return render

        uuid = hashlib.sha1(self.caption.encode()).hexdigest()[
            :8
        ]  # stable output, build after build
        styler = self.df.style.hide(axis="index").format(
            {c: cell(c) for c in self.df.columns},
            escape="latex-math" if target == "latex" else None,
            na_rep="–",
        )
        return styler.set_uuid(uuid).format_index(
            (lambda h: _html_math(html.escape(str(h)))) if target == "html" else None,
            escape="latex-math" if target == "latex" else None,
            axis=1,
        )

    def _repr_latex_(self) -> str:
        align = "".join("l" if self._is_text(c) else "r" for c in self.df.columns)
        latex = self._styler("latex").to_latex(
            hrules=True,
            column_format=align,
            environment="table",
            position="H",
            position_float="centering",
            caption=self.caption.replace("%", r"\%"),
        )
        return latex.replace(
            "\\begin{tabular}", "\\begin{adjustbox}{max width=\\linewidth}\n\\begin{tabular}"
        ).replace("\\end{tabular}", "\\end{tabular}\n\\end{adjustbox}")

    def _repr_html_(self) -> str:
        styles = [
            {"selector": f"td.col{i}, th.col_heading.col{i}", "props": "text-align: left"}
            for i, c in enumerate(self.df.columns)
            if self._is_text(c)
        ]
        return (
            self._styler("html")
            .set_caption(html.escape(self.caption))
            .set_table_styles(styles)
            .set_table_attributes('class="mlp-table"')
            .to_html()
        )

    def __repr__(self) -> str:
        return f"{self.caption}\n{self.df.to_string(index=False)}"


# ---- notebook setup --------------------------------------------------------------------------------------


def setup_notebook(font_size: float = 10.0) -> None:
    """Display settings for a task notebook, applied when called (never on import): vector figures
    (SVG in HTML, PDF in the LaTeX report), readable fonts, tight bounding boxes."""
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
    logging.getLogger("fontTools").setLevel(
        logging.ERROR
    )  # no font-subsetting chatter in the output


def show(text: str) -> None:
    """Display Markdown: how a number computed from the runs enters the text."""
    from IPython.display import Markdown, display

    display(Markdown(text))


# ---- analyses of networks ---------------------------------------------------------------------------------


def equal_width_for_budget(budget: int, n_hidden: int = 2) -> tuple[int, int]:
    """The width h of `n_hidden` equal hidden layers whose parameter count is closest to `budget`
    (ties go to the smaller h), and that count."""
    if budget <= 0 or n_hidden <= 0:
        raise ValueError(f"budget and n_hidden must be positive, got {budget} and {n_hidden}")
    counts = {
        h: mlp.count_parameters([h] * n_hidden + [mlp.NUM_CLASSES]) for h in range(1, budget + 1)
    }
    best = min(counts, key=lambda h: (abs(counts[h] - budget), h))
    return best, counts[best]


def initialisation_stats(config: mlp.RunConfig, X: np.ndarray, val: mlp.Split) -> dict[str, float]:
    """The first hidden layer of the network train(config) starts from, on the inputs X: spread of the
    pre-activations z, mean and spread of f(z), mean slope relative to f'(0), the share of saturated
    units (slope below f'(0)/10, in %) and the validation loss before any update."""
    model = mlp.initial_model(config)
    _, slope = mlp.ACTIVATIONS[config.activation]
    a = model.hidden_outputs(X)[0]
    s, s0 = slope(a), slope_at_zero(config.activation)
    return {
        "std z": float((X @ model.weights[0]).std()),
        "mean f": float(a.mean()),
        "std f": float(a.std()),
        "slope": float(s.mean() / s0),
        "saturated": 100 * float((s < 0.1 * s0).mean()),
        "val loss": mlp.evaluate(model, val)[0],
    }


def mean_slope(config: mlp.RunConfig, X: np.ndarray) -> tuple[float, float]:
    """The mean slope f'(z) over every hidden unit of the network train(config) starts from, on the
    inputs X, and the slope f'(0) at the origin."""
    model = mlp.initial_model(config.replace(dtype="float64"))
    _, slope = mlp.ACTIVATIONS[config.activation]
    slopes = [slope(a).mean() for a in model.hidden_outputs(X.astype(np.float64))]
    return float(np.mean(slopes)), slope_at_zero(config.activation)


def slope_at_zero(activation: str) -> float:
    """f'(0), the largest slope of an activation of mlp_core.ACTIVATIONS."""
    f, slope = mlp.ACTIVATIONS[activation]
    return float(slope(f(np.zeros(1)))[0])


def gradient_ratios(h: mlp.History, when: str) -> tuple[float, float]:
    """Input side over output side of a run's per-layer gradient norms, W1/WL and W2/W(L-1): at
    initialisation (`when` "init") or the median over its validations ("training")."""
    n = np.asarray(h.init_grad_norms if when == "init" else h.grad_norms, dtype=float)
    return float(np.median(n[..., 0] / n[..., -1])), float(np.median(n[..., 1] / n[..., -2]))


def signed(x: float, fmt: str = "+.2f") -> str:
    """A signed number with a true minus sign: '+0.57', '−1.64'."""
    return format(x, fmt).replace("-", "−")


def first_step_below(h: mlp.History, loss: float) -> float:
    """The first validation step with a validation loss below `loss` (NaN if none)."""
    return next((float(s) for s, v in zip(h.val_steps, h.val_loss) if v < loss), math.nan)


def val_jitter(h: mlp.History, skip: int) -> float:
    """Mean absolute change of the validation loss between consecutive validations, after `skip`."""
    v = np.asarray(h.val_loss[skip:])
    return float(np.abs(np.diff(v)).mean()) if len(v) > 1 else math.nan
