"""The comparison chart says what was transplanted onto what, with axis labels a person reads."""

import math

from transplant.evaluation.evaluate import Evaluation, Score
from transplant.evaluation.report import ratio_figure


def evaluation(name: str, bits_per_byte: dict[str, float]) -> Evaluation:
    return Evaluation(name, {g: Score(nll=b * math.log(2) * 1000, tokens=250, bytes=1000, docs=1)
                             for g, b in bits_per_byte.items()})


def test_ratio_figure_names_base_and_tokenizer_and_labels_plain_numbers():
    base = evaluation("smollm2-135m", {"en": 1.0, "de": 1.2})
    results = {"subword": evaluation("subword", {"en": 1.6, "de": 2.4}),
               "omp": evaluation("omp", {"en": 1.3, "de": 2.0})}
    fig = ratio_figure(base, results, "gemma3-270m")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert "smollm2-135m" in ax.get_title() and "gemma3-270m" in ax.get_title()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True)]
    shown = [label for label in labels if label]
    assert shown and all("^" not in label and "times" not in label for label in shown), shown
    assert all(float(label) > 0 for label in shown)
