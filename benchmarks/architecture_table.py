"""Write the architecture x capability table of docs/architectures.md from a test run.

    python -m pytest tests/test_architectures.py -o junit_family=xunit1 --junitxml out/architectures.xml
    python benchmarks/architecture_table.py out/architectures.xml docs/architectures.md

Each cell is one test of tests/test_architectures.py: pass, fail, an expected failure (a
known limitation outside this tool), or not run (the slow suite was left out). The tables
replace whatever lies between the ``<!-- table -->`` / ``<!-- /table -->`` and
``<!-- refused -->`` / ``<!-- /refused -->`` markers; the prose around them is kept.
"""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from pathlib import Path

# test function -> column title; a "{}" takes the last id part (the method, or rows new/all)
COLUMNS = {
    "test_transplant_loads_computes_the_base_on_copied_tokens_and_generates": "{}",
    "test_the_tools_loader_reads_text_as_the_new_tokenizer": "tokenizer",
    "test_auto_tokenizer_reads_text_as_the_new_tokenizer": "AutoTokenizer",
    "test_evaluate_scores_the_transplant": "evaluate",
    "test_train_two_steps": "train rows: {}",
    "test_hypernet_trains_two_steps": "hypernet train",
    "test_zett_step_logits_are_the_models_own": "zett step logits",
}
ORDER = ["subword", "omp", "tokenadapt", "focus", "zett", "tokenizer", "AutoTokenizer", "evaluate", "train rows: new",
         "train rows: all", "hypernet train", "zett step logits"]
MARKS = {"passed": "✓", "failed": "✗", "xfailed": "✗ ¹", "skipped": "–"}


def outcome(case: ET.Element) -> str:
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    skipped = case.find("skipped")
    if skipped is not None:
        return "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
    return "passed"


def read(path: Path) -> tuple[dict[tuple[str, str], dict[str, str]], dict[str, str]]:
    """(arch, tying) -> column -> outcome, and refused case -> the one line it printed."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    refused: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        match = re.fullmatch(r"(\w+)\[(.+)\]", case.get("name", ""))
        if not match:
            continue
        function, ident = match.groups()
        if function == "test_unsupported_architectures_are_refused_in_one_line":
            line = next((p.get("value") for p in case.iter("property") if p.get("name") == "refusal"), None)
            refused[ident] = line if outcome(case) == "passed" and line else "✗ not refused as it should be"
        elif function in COLUMNS:
            arch, tying, *rest = ident.split("-")
            cells.setdefault((arch, tying), {})[COLUMNS[function].format(*rest)] = outcome(case)
    return cells, refused


def table(cells: dict[tuple[str, str], dict[str, str]]) -> str:
    lines = ["| architecture | " + " | ".join(ORDER) + " |", "|---|" + "---|" * len(ORDER)]
    for (arch, tying), row in cells.items():
        lines.append(f"| {arch} ({tying}) | " + " | ".join(MARKS[row.get(c, "skipped")] for c in ORDER) + " |")
    return "\n".join(lines)


def refusals(refused: dict[str, str]) -> str:
    lines = ["| case | the one line `transplant model` prints (exit 2) |", "|---|---|"]
    return "\n".join(lines + [f"| {case} | {line} |" for case, line in refused.items()])


def replace(text: str, marker: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {marker} -->\n)(?:.*?\n)?(<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- {marker} --> ... <!-- /{marker} --> markers in the document")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path, help="pytest --junitxml output of tests/test_architectures.py")
    parser.add_argument("doc", type=Path, help="the markdown file whose marked tables are replaced")
    args = parser.parse_args()
    cells, refused = read(args.junit)
    text = replace(args.doc.read_text(), "table", table(cells))
    args.doc.write_text(replace(text, "refused", refusals(refused)))


if __name__ == "__main__":
    main()
