"""A verdict in the text comes from the test: one tiny notebook, built by the report build with two
synthetic run sets (a clear difference, and one within the spread between seeds) and with one
seed, reads "higher … (p = …)", "about the same … (p = …)" and "higher … (†)" in its sentence
and on the answers page, and never fails a strict build (seconds each, no training)."""

import html
import re

import pytest
from test_build import build, env, needs_pandoc, notebook  # noqa: F401 (env is a fixture)

SENTENCE = "With 128 units the validation accuracy is {eval}`runs.verdict(WIDE, NET, 'val_acc')`."
ANSWER = (
    "**Task 9a.** The accuracy of the wider network is {eval}`runs.verdict(WIDE, NET, 'val_acc')`."
)
RUN_SETS = {  # final validation accuracies per seed of the two networks, and the rendered words
    "significant": (
        [0.969, 0.9685, 0.9695],
        [0.963, 0.962, 0.9645],
        "higher, 96.90 % against 96.32 % (p = 0.0078)",
    ),
    "not significant": (
        [0.9631, 0.962, 0.9641],
        [0.9633, 0.9645, 0.9622],
        "about the same, 96.31 % against 96.33 % (p = 0.78)",
    ),
    "one seed": ([0.969], [0.963], "higher, 96.90 % against 96.30 % (†)"),
}


def cells(wide: list[float], net: list[float]) -> list[tuple[str, str]]:
    """The tiny notebook: the runs of two networks made up from their final accuracies, a
    sentence with a rendered verdict, and the same verdict in the answer cell."""
    runs = (
        "import mlp_core as mlp\n\n"
        "WIDE, NET = '1 × 128', '1 × 64'\n"
        "runs = rep.Runs({})\n"
        f"for label, accuracies in ((WIDE, {wide}), (NET, {net})):\n"
        "    runs[label] = [mlp.History(mlp.RunConfig(seed=s), stop_reason='early_stopping')\n"
        "                   for s in range(len(accuracies))]\n"
        "    for h, acc in zip(runs[label], accuracies):\n"
        "        h.final = dict(train_loss=0.1, val_loss=0.3, train_acc=0.99, val_acc=acc)"
    )
    return [
        ("markdown", "# Task 9 — Verdicts\n\n## Task 9a — Width"),
        ("code", runs),
        ("markdown", SENTENCE),
        ("markdown", ANSWER),
    ]


def page_text(path) -> str:
    """The HTML report's text: tags removed, entities decoded, non-breaking spaces as spaces."""
    text = html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))
    return re.sub(r"\s+", " ", text.replace("\u00a0", " "))


@needs_pandoc
@pytest.mark.parametrize("case", RUN_SETS)
def test_the_inline_verdict_follows_the_runs(env, tmp_path, case):  # noqa: F811
    wide, net, words = RUN_SETS[case]
    notebook(tmp_path / "nb", "task9_verdicts", cells(wide, net))
    result = build(env, tmp_path / "nb", tmp_path / "out", MLP_STRICT="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = page_text(tmp_path / "out" / "report.html")
    assert f"With 128 units the validation accuracy is {words}." in text
    answers = text.split("Answers at a glance", 1)[1]
    assert f"The accuracy of the wider network is {words}." in answers
    assert "Not supported" not in text and not re.search(r"\bnan\b", text)
