"""The report layer: settings from the environment, the comparison rule, checked claims, number
formatting and tables."""

import math
import re

import pandas as pd
import pytest

import mlp_core as mlp
import mlp_report as rep

# ---- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
        ("1", True),
        ("true", True),
        (" yes ", True),
        ("on", True),
    ],
)
def test_env_flags(monkeypatch, value, expected):
    monkeypatch.setenv("MLP_SMOKE", value)
    assert rep.smoke_mode() is expected


@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_unknown_flag_values_are_errors(monkeypatch, value):
    monkeypatch.setenv("MLP_SMOKE", value)
    with pytest.raises(
        ValueError, match=f"MLP_SMOKE=.{value}. is not understood: use 1 .* to switch it on, 0"
    ):
        rep.smoke_mode()


def test_n_seeds(monkeypatch):
    monkeypatch.delenv("MLP_SMOKE", raising=False)
    monkeypatch.delenv("MLP_SEEDS", raising=False)
    assert rep.n_seeds(3) == 3
    monkeypatch.setenv("MLP_SMOKE", "1")
    assert rep.n_seeds(3) == 1
    monkeypatch.setenv("MLP_SEEDS", "5")
    assert rep.n_seeds(3) == 5
    monkeypatch.setenv("MLP_SEEDS", "zero")
    with pytest.raises(
        ValueError, match="MLP_SEEDS must be a positive integer such as 3, got 'zero'"
    ):
        rep.n_seeds()


def test_experiments_expand_seeds_and_smoke(monkeypatch):
    monkeypatch.setenv("MLP_SMOKE", "1")
    monkeypatch.setenv("MLP_SEEDS", "2")
    exps = rep.experiments(
        {"a": mlp.RunConfig(), "b": mlp.RunConfig(momentum=0.9, learning_rate=0.02)}
    )
    configs = exps.configs()
    assert [(c.name, c.seed) for c in configs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(c.n_train == rep.SMOKE_SETTINGS["n_train"] and c.max_epochs == 2 for c in configs)
    assert exps.seeds == (0, 1)


def test_experiments_normalise_and_check_their_seeds(monkeypatch):
    """numpy seeds (np.arange) become Python ints, so the run store can key them; bad input is
    named."""
    import numpy as np

    monkeypatch.delenv("MLP_SMOKE", raising=False)
    exps = rep.experiments({"a": mlp.RunConfig()}, seeds=np.arange(2))
    assert exps.seeds == (0, 1) and all(type(s) is int for s in exps.seeds)
    with pytest.raises(ValueError, match="networks must be a non-empty dict"):
        rep.experiments([mlp.RunConfig()])
    with pytest.raises(ValueError, match="network 'a' must be a RunConfig, got dict"):
        rep.experiments({"a": {"layer_sizes": (64, 10)}})
    with pytest.raises(ValueError, match="timed names networks that are not in the experiments"):
        rep.experiments({"a": mlp.RunConfig()}, timed=["b"])


@pytest.mark.parametrize("value", ["0", "-1", "three", "²", "٣", "1.5"])
def test_bad_seed_counts_are_named(monkeypatch, value):
    """Anything but ASCII digits is refused naming MLP_SEEDS: "²" passes str.isdigit() but not
    int(), and "٣" (an Arabic-Indic three) passes int()."""
    monkeypatch.setenv("MLP_SEEDS", value)
    with pytest.raises(
        ValueError, match=f"MLP_SEEDS must be a positive integer such as 3, got '{value}'"
    ):
        rep.n_seeds()


# ---- the comparison rule -------------------------------------------------------------------------


def test_a_clear_difference():
    c = rep.compare([96.9, 96.85, 96.95], [96.3, 96.2, 96.45], "128", "64", "val_acc")
    assert c.p < 0.01 and c.verdict == "higher"
    assert c.expect("higher").holds and not c.expect("same").holds and not c.expect("lower").holds
    assert rep.compare([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]).verdict == "lower"


def test_a_tie():
    c = rep.compare([96.31, 96.2, 96.41], [96.33, 96.45, 96.22])
    assert (
        c.p > 0.5
        and c.verdict == "same"
        and c.expect("same").holds
        and not c.expect("higher").holds
    )


def test_one_seed_decides_nothing():
    c = rep.compare([96.9], [96.3], "a", "b", "val_acc")
    assert math.isnan(c.p) and c.verdict is None
    assert not c.expect("higher").holds and not c.expect("same").holds
    assert str(c) == "validation accuracy 96.90\u00a0% (a) against 96.30\u00a0% (b)"  # no p, no nan


def test_one_sided_claims_hold_whichever_way_a_close_test_goes():
    """'not higher' is borne out by 'lower' and by 'same', so a test near the threshold cannot flip
    it; a clear difference the other way still can."""
    lower = rep.compare([1.0, 1.1, 1.2], [2.0, 2.1, 2.2])
    tie = rep.compare([96.31, 96.2, 96.41], [96.33, 96.45, 96.22])
    for c in (lower, tie):
        assert c.expect("not_higher").holds
    assert not lower.expect("not_lower").holds and tie.expect("not_lower").holds
    assert not rep.compare([96.9], [96.3]).expect("not_higher").holds  # one seed: untested
    with pytest.raises(ValueError, match="a claim states one of 'higher', 'lower', 'same', 'not_"):
        lower.expect("better")


def test_no_spread_at_all():
    assert rep.compare([100.0, 100.0], [100.0, 100.0]).verdict == "same"
    assert rep.compare([125.0, 125.0, 125.0], [250.0, 250.0, 250.0]).verdict == "lower"


def test_the_rule_is_welchs_t_test():
    from scipy.stats import ttest_ind

    a, b = [0.1411, 0.1380, 0.1442], [0.1402, 0.1350, 0.1455]
    assert rep.compare(a, b).p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert "Welch" in rep.COMPARISON_RULE and f"p < {rep.ALPHA:g}" in rep.COMPARISON_RULE


# ---- verdicts in the text ------------------------------------------------------------------------

NB = "\u00a0"


def _runs(**values):
    """A Runs table with one run per value: label -> final validation accuracies (fractions)."""
    return rep.Runs(
        {
            label: [_history(i, acc, name=label) for i, acc in enumerate(accs)]
            for label, accs in values.items()
        }
    )


def test_vs_gives_both_means_in_the_metrics_format():
    runs = _runs(a=[0.96, 0.97], b=[0.95, 0.95])
    assert runs.vs("a", "b", "val_acc") == f"96.50{NB}% against 95.00{NB}%"
    assert runs.vs("a", "b", "val_loss") == "0.3000 against 0.3000"
    p = rep.p_value(runs.compare("a", "b", "val_acc").p)
    assert runs.vs("a", "b", "val_acc", p=True) == f"96.50{NB}% against 95.00{NB}% ({p})"
    one_seed = _runs(a=[0.96], b=[0.95])
    assert one_seed.vs("a", "b", "val_acc", p=True) == f"96.00{NB}% against 95.00{NB}% (†)"


def test_a_verdict_is_worded_from_the_test():
    clear = _runs(a=[0.969, 0.9685, 0.9695], b=[0.963, 0.962, 0.9645])
    assert clear.compare("a", "b", "val_acc").p == pytest.approx(0.0078, abs=1e-4)
    assert clear.verdict("a", "b", "val_acc") == (
        f"higher, 96.90{NB}% against 96.32{NB}% (p{NB}={NB}0.0078)"
    )
    assert clear.verdict("b", "a", "val_acc").startswith("lower, 96.32")
    far = _runs(a=[0.9690, 0.9691, 0.9692], b=[0.9630, 0.9631, 0.9632])
    assert far.verdict("a", "b", "val_acc").endswith(f"(p{NB}<{NB}0.001)")
    tie = _runs(a=[0.9631, 0.962, 0.9641], b=[0.9633, 0.9645, 0.9622])
    p = tie.compare("a", "b", "val_acc").p
    assert tie.verdict("a", "b", "val_acc") == (
        f"about the same, 96.31{NB}% against 96.33{NB}% (p{NB}={NB}{rep.sig(p, 2)})"
    )


def test_a_verdict_uses_the_metrics_own_words():
    gap = rep.compare([3.0, 3.1, 3.2], [1.0, 1.1, 1.2], m="gap")
    assert gap.phrase().startswith("larger, 3.10" + NB + "points against 1.10" + NB + "points")
    later = rep.compare([900.0, 950.0, 1000.0], [100.0, 110.0, 120.0], m=rep.steps_to(0.9))
    assert later.phrase().startswith("later, 950 against 110 (p")
    assert (
        rep.compare([1.0, 1.1, 1.2], [9.0, 9.1, 9.2], m="best_step")
        .phrase()
        .startswith("earlier, ")
    )


@pytest.mark.parametrize(
    "p, text",
    [(0.0213, "p = 0.021"), (0.0696, "p = 0.070"), (0.41, "p = 0.41"), (2e-5, "p < 0.001")],
)
def test_p_values_for_the_text(p, text):
    assert rep.p_value(p) == text.replace(" ", NB)


def test_a_verdict_with_one_seed_follows_the_means_and_is_marked():
    """One seed tests nothing: the word follows the means, the † of untested claims stands in
    for the p-value, and nothing reads nan."""
    runs = _runs(a=[0.96], b=[0.95])
    assert runs.verdict("a", "b", "val_acc") == f"higher, 96.00{NB}% against 95.00{NB}% (†)"
    assert runs.verdict("a", "a", "val_loss") == "about the same, 0.3000 against 0.3000 (†)"
    lost = rep.Runs({"a": [_history(0, math.nan, "diverged")], "b": [_history(0, 0.95)]})
    assert lost.verdict("a", "b", "val_acc") == f"– against 95.00{NB}% (†)"
    assert "nan" not in lost.vs("a", "b", "val_acc")


# ---- checked claims ------------------------------------------------------------------------------


@pytest.fixture
def displayed(monkeypatch):
    """What check() displays, as (markdown text, metadata) pairs."""
    import IPython.display

    shown = []
    monkeypatch.setattr(
        IPython.display, "display", lambda obj, metadata=None: shown.append((obj.data, metadata))
    )
    monkeypatch.delenv("MLP_STRICT", raising=False)
    return shown


def test_a_claim_that_holds_shows_nothing(displayed):
    rep.check("128 units beat 64", rep.compare([2.0, 2.1, 2.2], [1.0, 1.1, 1.2]).expect("higher"))
    rep.check("a plain fact", True)
    assert displayed == []


def test_an_unsupported_claim_gets_a_visible_note_in_the_reports_words(displayed):
    rep.check(
        "128 units beat 64",
        rep.compare([96.0, 96.5, 97.2], [96.1, 96.4, 97.0], "128", "64", "val_acc").expect(
            "higher"
        ),
    )
    ((text, metadata),) = displayed
    assert text == (
        "> ⚠ **Not supported by these runs:** 128 units beat 64 (validation accuracy "
        "96.57\u00a0% (128) against 96.50\u00a0% (64), Welch's p\u00a0=\u00a00.89)."
    )
    assert "val_acc" not in text and "nan" not in text
    assert metadata["mlp_claim"]["claim"] == "128 units beat 64"


def test_claims_one_seed_cannot_test_are_marked_compactly(displayed):
    """With one seed per network, every claim of a check cell goes into one short marked line,
    not a note each; the build counts them apart from unsupported claims."""
    runs = rep.Runs({"a": [_history(0, 0.96)], "b": [_history(0, 0.95)]})
    runs.check("a", "b", {"a is higher": ("higher", "val_acc"), "a ties": ("same", "train_acc")})
    rep.check("the reference lies within two standard deviations", None)
    assert len(displayed) == 2
    text, metadata = displayed[0]
    assert text == "<small>† Not tested with one seed: a is higher; a ties.</small>"
    assert [n["claim"] for n in metadata["mlp_claims_untestable"]] == ["a is higher", "a ties"]
    assert "mlp_claim" not in metadata


def test_an_unsupported_claim_fails_under_strict(displayed, monkeypatch):
    monkeypatch.setenv("MLP_STRICT", "1")
    with pytest.raises(
        rep.ClaimNotSupported,
        match="claim not supported by these runs: 'momentum ties on accuracy'",
    ):
        rep.check(
            "momentum ties on accuracy",
            rep.compare([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]).expect("same"),
        )
    rep.check("this one holds", True)  # a claim that holds never fails
    assert displayed == []


# ---- formatting and tables -----------------------------------------------------------------------


def test_numbers_for_the_text():
    assert rep.mean_std([1.0, 3.0], ".1f") == "2.0\u00a0±\u00a01.4"
    assert rep.mean_std([2.5], ".2f") == "2.50"
    assert rep.mean_std([], ".2f") == "–"
    assert rep.mean_std([-0.5, -1.5], ".1f") == "−1.0\u00a0±\u00a00.7"
    assert rep.mean_std_sig([0.006, 0.0068, 0.0062]) == "0.00633\u00a0±\u00a00.00042"
    assert rep.pct(96.333) == "96.33\u00a0%" and rep.count(21583.4) == "21,583"
    assert rep.num(-0.12345, 3) == "−0.123" and rep.sig(0.0063512) == "0.00635"
    assert rep.signed(0.57) == "+0.57" and rep.signed(-1.644) == "−1.64"
    for helper in (rep.pct, rep.count, rep.num, rep.sig, rep.signed, rep.sci):
        assert helper(math.nan) == "–" or helper is rep.sci
    # shown in Jupyter without quotes, as jupyterlab-myst and the build show inline values
    assert repr(rep.pct(50)) == "50.00\u00a0%"


def test_sci():
    assert rep.sci(1.45e-8) == "1.45 × 10⁻⁸"
    assert rep.sci(1e-6, 1) == "10⁻⁶"
    assert rep.sci(3.3178e-7, 2) == "3.3 × 10⁻⁷"
    assert rep.powers_as_math(rep.sci(1.45e-8)) == r"$1.45 \times 10^{-8}$"
    assert rep.powers_as_math("at 10⁻⁶ and 2.0 × 10¹²") == r"at $10^{-6}$ and $2.0 \times 10^{12}$"


def test_table_renders_as_latex_and_html():
    df = pd.DataFrame(
        {
            "network": ["1 × 64 (Task 3)", "1 × 128"],
            "val acc (%)": ["96.33 ± 0.11", "96.90 ± 0.04"],
            "$W_1 / W_{11}$": [rep.sci(1.5e-8), rep.sci(2e-3)],
            "count": [3, 12345],
        }
    )
    table = rep.Table(df, formats={"count": ",d"})
    latex, page = table._repr_latex_(), table._repr_html_()
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\begin{tabular}{lrrr}" in latex
    assert r"$W_1 / W_{11}$" in latex and r"$1.50 \times 10^{-8}$" in latex and "12,345" in latex
    assert "<table" in page and "12,345" in page
    assert (
        "W<sub>1</sub> / W<sub>11</sub>" in page and "10<sup>−8</sup>" in page and "$" not in page
    )
    assert re.search(r"td\.col0 \{\s*text-align: left", page) and not re.search(
        r"td\.col1 \{", page
    )  # words left, numbers right
    assert table._repr_html_() == page  # the same output build after build


def _history(seed, val_acc, reason="early_stopping", name="net"):
    h = mlp.History(
        config=mlp.RunConfig(seed=seed, name=name),
        stop_reason=reason,
        best_val_loss=0.3,
        best_step=125,
        train_loss=[2.0] * 200,
        val_steps=[0, 125],
        val_acc=[0.5, val_acc if math.isfinite(val_acc) else 0.5],
    )
    h.final = dict(train_loss=0.1, val_loss=0.3, train_acc=0.99, val_acc=val_acc)
    return h


def test_runs_table_and_failures():
    runs = rep.Runs(
        {"net": [_history(0, 0.96), _history(1, 0.97), _history(2, math.nan, "diverged")]}
    )
    assert list(runs.per_seed("net", "val_acc")) == [96.0, 97.0]
    assert runs.cell("net", "val_acc") == "96.50\u00a0±\u00a00.71 (2 of 3 seeds; 1 diverged)"
    assert runs.value("net", "val_acc") == "96.50\u00a0%" and runs.span("net", "steps") == "200"
    df = runs.table(rep.FINAL_METRICS, seeds=True)
    assert list(df.columns) == [
        "network",
        "seeds",
        "train loss",
        "val loss",
        "train acc (%)",
        "val acc (%)",
    ]
    assert "inf" not in df.to_string() and "nan" not in df.to_string()


def test_a_network_that_diverged_in_every_seed_reads_correctly():
    """Every seed diverged: no crash, no nan, and the table says why its cells are empty."""
    runs = rep.Runs({"net": [_history(0, math.nan, "diverged"), _history(1, math.nan, "diverged")]})
    assert runs.span("net", "steps") == "–" and runs.value("net", "val_acc") == "–"
    assert runs.cell("net", "val_acc") == "– (0 of 2 seeds; 2 diverged)"
    assert math.isnan(runs.common_level(["net"]))
    assert "nan" not in str(runs.compare("net", "net", "val_acc"))


def test_common_level_ignores_runs_that_did_not_complete():
    runs = rep.Runs({"a": [_history(0, 0.96), _history(1, 0.9, "diverged")]})
    assert runs.common_level(["a"]) == pytest.approx(0.95)


def test_every_metric_has_words_a_header_and_a_format():
    for name, m in rep.METRICS.items():
        assert m.words and m.header and "_" not in m.words + m.header, name
    assert rep.steps_to(0.95).words == "steps to 95\u00a0%"


def test_equal_width_for_budget():
    assert rep.equal_width_for_budget(50_880, n_hidden=2) == (60, 51_300)
    assert rep.equal_width_for_budget(50_880, n_hidden=1) == (64, 50_880)
    with pytest.raises(ValueError, match="budget"):
        rep.equal_width_for_budget(0)


def test_pair_claims_are_worded_from_the_metric_table(displayed):
    claims = rep.claims("3a", "the baseline", lower=["val_loss"], same=[rep.steps_to(0.9)])
    assert claims == {
        "3a: final validation loss lower than for the baseline": ("lower", "val_loss"),
        "3a: steps to 90\u00a0% about the same as for the baseline": (
            "same",
            list(claims.values())[1][1],
        ),
    }
    with pytest.raises(ValueError, match="a claim states one of 'higher', 'lower', 'same', 'not_h"):
        rep.claims("a", "b", better=["val_acc"])
    runs = rep.Runs({"3a": [_history(0, 0.96)], "the baseline": [_history(0, 0.95)]})
    runs.check("3a", "the baseline", claims)
    ((text, _),) = displayed
    assert text == (
        "<small>† Not tested with one seed: 3a: final validation loss lower than for the "
        "baseline; steps to 90\u00a0% about the same as for the baseline.</small>"
    )


def test_tables_of_the_analyses():
    """Task 4d's widths around the chosen one, and Task 3's 'before → after' means (– where a
    network never reaches the level)."""
    widths = rep.width_table(50_880, 60)
    assert list(widths["h"]) == [59, 60, 61] and list(widths["chosen"]) == ["", "yes", ""]
    assert list(widths["params(h)"]) == ["50,386", "51,300", "52,216"]
    assert list(widths["|params(h) − 50,880|"]) == ["494", "420", "1,336"]
    runs = _runs(base=[0.95, 0.96], trick=[0.97, 0.98])
    never = rep.steps_to(0.99)
    table = runs.before_after([("init", "2c", "base", "trick", never)], ["val_acc", "val_loss"])
    assert table.to_dict("records") == [
        {
            "trick": "init",
            "on": "2c",
            "val acc (%)": "95.50 → 97.50",
            "val loss": "0.3000 → 0.3000",
            "steps to level": "– → –",
        }
    ]
