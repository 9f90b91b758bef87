"""Trans-tokenization: symmetrization by hand, the translation table on a cipher corpus,
smoothing, the parallel-corpus reader's errors, the CLI end to end, and the man-page aligner."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from transformers import AutoModelForCausalLM

from conftest import WORDS, bpe_tokenizer
from test_cli import assert_user_error, run
from test_methods import identity_parallel, make_context
from transplant.maths.alignment import Links, grow_diag_final, intersect, symmetrize
from transplant.errors import UserError
from transplant.methods import registry
from transplant.methods.transtok import TransTokOptions, build_plan, donors
from transplant.inputs.parallel import read_parallel
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies

pytestmark = pytest.mark.usefixtures("one_thread")

# --- symmetrization ---------------------------------------------------------------------

# forward: each target position has one source position; reverse: each source one target.
FORWARD = {(0, 0), (1, 1), (2, 2), (0, 3), (4, 4)}
REVERSE = {(0, 0), (1, 1), (2, 2), (3, 2), (4, 3)}


def test_symmetrization_by_hand() -> None:
    assert intersect(FORWARD, REVERSE) == {(0, 0), (1, 1), (2, 2)}
    # grow-diag: (3,2) neighbours (2,2) and aligns source 3; then (4,3) neighbours (3,2) diagonally;
    # then (4,4) neighbours (4,3) and aligns target 4. final: (0,3) would align nothing new.
    assert grow_diag_final(FORWARD, REVERSE) == {(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (4, 4)}
    # final adds a lone link that aligns a token nothing else aligns; grow never reaches it
    assert grow_diag_final({(0, 0), (3, 5)}, {(0, 0)}) == {(0, 0), (3, 5)}
    assert grow_diag_final({(0, 0), (1, 0)}, {(0, 0), (1, 0)}) == {(0, 0), (1, 0)}  # agreed links stay


def test_symmetrize_a_corpus_matches_per_pair() -> None:
    forward = Links.from_sets([FORWARD, {(0, 1)}, set()])
    reverse = Links.from_sets([REVERSE, {(0, 1), (1, 0)}, {(0, 0)}])
    assert symmetrize(forward, reverse, 3, "intersect").per_pair(3) == [intersect(FORWARD, REVERSE), {(0, 1)}, set()]
    grown = symmetrize(forward, reverse, 3, "grow-diag-final").per_pair(3)
    assert grown == [grow_diag_final(FORWARD, REVERSE), {(0, 1), (1, 0)}, {(0, 0)}]


# --- the cipher corpus ------------------------------------------------------------------


def cipher(word: str) -> str:
    """Each letter and digit shifted by one: a target word that spells a known source word."""
    return "".join(chr(ord(c) + 1) if "a" <= c < "z" or "0" <= c < "9" else c for c in word)


SPLIT = {"garden": ("hbs", "efo"), "water": ("xbu", "fs")}  # source words that become two target words
ENGLISH = [w for w in WORDS if w.isascii()]
NUMBERS = ["1984", "2023", "1871"]  # "1984" becomes "2095": aligned, it would mean 1984


def target_words(word: str) -> tuple[str, ...]:
    return SPLIT.get(word, (cipher(word),))


@pytest.fixture(scope="module")
def cipher_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = random.Random(0)
    sentences = [[rng.choice(ENGLISH + NUMBERS) for _ in range(rng.randint(4, 12))] for _ in range(1500)]
    source = [" ".join(s) for s in sentences]
    target = [" ".join(t for w in s for t in target_words(w)) for s in sentences]
    root = tmp_path_factory.mktemp("cipher")
    (root / "source.txt").write_text("\n".join(source) + "\n")
    (root / "target.txt").write_text("\n".join(target) + "\n")
    (root / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(source, target)))
    base, new = bpe_tokenizer(root / "source.txt", 600), bpe_tokenizer(root / "target.txt", 600)
    match = match_vocabularies(base, new)
    for tokenizer, words in ((base, ENGLISH), (new, [t for w in ENGLISH for t in target_words(w)])):
        assert all(len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1 for w in words)  # whole words
    return {"root": root, "match": match, "base": base, "new": new}


def _id(tokenizer, word: str) -> int:
    return tokenizer.convert_tokens_to_ids("Ġ" + word)


@pytest.mark.parametrize("how", ["grow-diag-final", "intersect"])
def test_cipher_mapping_is_recovered(cipher_corpus: dict, how: str) -> None:
    match, base, new = cipher_corpus["match"], cipher_corpus["base"], cipher_corpus["new"]
    ctx = make_context(match, TransTokOptions(parallel=str(cipher_corpus["root"] / "pairs.tsv"), symmetrize=how,
                                              null_prior=0.01))  # every cipher token has a counterpart
    plan = build_plan(ctx, match.missing)
    position = {t: i for i, t in enumerate(match.missing.tolist())}
    table = plan.table.to_dense()
    expected = {_id(new, t): _id(base, w) for w in ENGLISH for t in target_words(w)}
    assert set(expected) <= set(position)  # every cipher word is a new token the base lacks
    split = {_id(new, piece): _id(base, w) for w, pieces in SPLIT.items() for piece in pieces}
    if how == "intersect":  # the reverse direction aligns a source word to one target word: either piece
        expected = {t: b for t, b in expected.items() if t not in split}
    hits = [int(table[position[t]].argmax()) == b for t, b in expected.items()]
    assert all(hits), [f"{new.convert_ids_to_tokens(t)}" for (t, _), h in zip(expected.items(), hits) if not h]
    for w, pieces in SPLIT.items():  # one-to-two: both pieces map to the word (one at least, intersected)
        mapped = [table[position[_id(new, piece)], _id(base, w)] > 0.5 for piece in pieces]
        assert all(mapped) if how == "grow-diag-final" else any(mapped)
    rows = registry.get("transtok")().init_rows(ctx, "input", match.missing)
    for t, b in expected.items():  # row = Σ p(b|t) E[b], mostly E[b] itself
        assert torch.allclose(rows[position[t]], table[position[t]] @ ctx.base_input, atol=1e-5)
        assert torch.cosine_similarity(rows[position[t]], ctx.base_input[b], dim=0) > 0.9


def test_numbers_are_spelled_and_unaligned_fall_back(cipher_corpus: dict) -> None:
    """A number is spelled by the base tokenizer, never aligned ("2095" aligns perfectly to
    "1984" here); tokens left without a table row get the subword rows."""
    root, match, new = cipher_corpus["root"], cipher_corpus["match"], cipher_corpus["new"]
    ctx = make_context(match, TransTokOptions(parallel_src=str(root / "source.txt"),
                                              parallel_tgt=str(root / "target.txt"), null_prior=0.01))
    plan = build_plan(ctx, match.missing)
    subword = registry.get("subword")().init_rows(make_context(match, registry.get("subword").Options()),
                                                  "input", match.missing)
    rows = registry.get("transtok")().init_rows(ctx, "input", match.missing)
    numbers = [i for i, t in enumerate(match.missing.tolist()) if match.surface(t).strip() in map(cipher, NUMBERS)]
    assert len(numbers) >= len(NUMBERS) and plan.fallback[numbers].all()  # with and without a word start
    assert plan.counts["exact"] >= len(NUMBERS)
    assert torch.allclose(rows[plan.fallback], subword[plan.fallback])
    assert torch.allclose(rows[~plan.fallback], plan.table.to_dense()[~plan.fallback] @ ctx.base_input, atol=1e-5)


def test_exact_match_adds_a_count(cipher_corpus: dict) -> None:
    """With every aligned pair under --min-count, what is left of the table is the one count
    a token gets toward the base tokens of its text (word start aside), and smoothing."""
    root, match = cipher_corpus["root"], cipher_corpus["match"]
    ctx = make_context(match, TransTokOptions(parallel=str(root / "pairs.tsv"), min_count=10**6))
    plan = build_plan(ctx, match.missing)
    base = match.base_vocab
    checked = 0
    for row, t in enumerate(match.missing.tolist()):
        text = match.new_vocab.surfaces[t].removeprefix(b" ")
        same = [b for b, s in enumerate(base.surfaces)
                if s.removeprefix(b" ") == text and s.strip() and not base.special[b]]
        if same and not match.new_vocab.special[t] and not text.strip().isdigit():
            expected = torch.zeros(len(base))
            expected[same] = 1 / len(same)
            assert torch.allclose(plan.table[row].to_dense(), expected), match.surface(t)
            checked += 1
    assert checked == plan.counts["aligned"] > 0


def test_donors_share_longest_prefix_else_contain() -> None:
    known = {1: " haus", 2: " hausboot", 3: " hauswand", 4: " garten", 5: "ung", 6: " wohnung", 7: " hausrat"}
    unknown = {10: " hausbau", 11: " hauswände", 12: " hausxy", 13: "ohnu", 14: "ungen", 15: " xy", 16: "gart"}
    assert donors(unknown, known) == {
        10: [2],  # " hausb" is the longest prefix it shares, with " hausboot" only
        11: [3],
        12: [1, 2, 3, 7],  # " haus": every known token that starts so
        13: [6],  # no prefix of 3 characters: contained in " wohnung"
        14: [5],  # a word start must match: "ungen" starts like "ung", not like " ung..."
        16: [4],  # "gart" starts no known token without a word start, but " garten" contains it
    }  # " xy": too short to say anything
# --- the parallel corpus: options and reader ----------------------------------------------


@pytest.mark.parametrize(("given", "fragment"), [
    ({}, "needs a parallel corpus"),
    ({"parallel": "a.tsv", "parallel_src": "a.txt", "parallel_tgt": "b.txt"}, "not both"),
    ({"parallel_src": "a.txt"}, "go together"),
    ({"parallel": "nope.tsv"}, "parallel corpus not found: nope.tsv"),
    ({"parallel": "GOOD", "min_count": 0}, "--min-count"),
    ({"parallel": "GOOD", "symmetrize": "union"}, "--symmetrize"),
    ({"parallel": "GOOD", "null_prior": 1.5}, "--null-prior"),
    ({"parallel": "GOOD", "max_tokens": 2000}, "--max-tokens"),
])
def test_bad_options(tmp_path: Path, given: dict, fragment: str) -> None:
    good = identity_parallel(tmp_path / "good.tsv", 5)
    with pytest.raises(UserError, match=fragment):
        TransTokOptions(**{k: str(good) if v == "GOOD" else v for k, v in given.items()})


def test_reader_keeps_pairs_with_text_on_both_sides(tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    tsv.write_text("a house\tein Haus\r\n\t\nuntranslated\t \n the sky \tder Himmel\n")
    corpus = read_parallel(str(tsv))
    assert (corpus.source, corpus.target) == (["a house", "the sky"], ["ein Haus", "der Himmel"])
    (tmp_path / "en").write_text("a house\n\nthe sky\n")
    (tmp_path / "de").write_text("ein Haus\nleer\nder Himmel\n")
    assert read_parallel(None, str(tmp_path / "en"), str(tmp_path / "de")) == corpus


# --- the command line -------------------------------------------------------------------


def test_cli_end_to_end(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    tsv, out = identity_parallel(tmp_path / "p.tsv"), tmp_path / "out"
    result = run("model", str(base_model), "--tokenizer", str(sp_model), "-o", str(out), "--method", "transtok",
                 "--parallel", str(tsv), "--symmetrize", "intersect", "--min-count", "1", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "transplant.json").read_text())
    assert record["method"] == "transtok" and record["options"]["parallel"] == str(tsv)
    assert record["options"]["symmetrize"] == "intersect" and record["counts"]["initialized"] > 0
    report = record["method_report"]  # what the alignment reached, for an audit
    assert report["counts"]["pairs"] == 300 and report["counts"]["aligned"] > 0
    assert set(report["seconds"]) == {"tokenize", "align", "symmetrize", "count", "smooth"}
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = load_tokenizer(str(sp_model))("the house over the garden", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize(("files", "flags", "fragment"), [
    ({"p.tsv": "a\tb\nc\td\nno tab here\n"}, ["--parallel", "p.tsv"], "p.tsv:3: no tab"),
    ({"p.tsv": "a\tb\nc\td\te\n"}, ["--parallel", "p.tsv"], "p.tsv:2: 2 tabs"),
    ({"en": "a\nb\nc\n", "de": "x\ny\n"}, ["--parallel-src", "en", "--parallel-tgt", "de"], "en:3: "),
    ({"en": "a\n", "de": "x\ny\n"}, ["--parallel-src", "en", "--parallel-tgt", "de"], "line-aligned"),
    ({"p.tsv": ""}, ["--parallel", "p.tsv"], "p.tsv: the parallel corpus is empty"),
    ({"p.tsv": "a\t\n\tb\n"}, ["--parallel", "p.tsv"], "no pair has text on both sides"),
])
def test_bad_corpus_is_one_line_and_nothing_written(base_model: Path, sp_model: Path, tmp_path: Path,
                                                    files: dict, flags: list, fragment: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    flags = [str(tmp_path / f) if f in files else f for f in flags]
    out = tmp_path / "out"
    result = run("model", str(base_model), "--tokenizer", str(sp_model), "-o", str(out), "--method", "transtok",
                 *flags)
    assert_user_error(result, out, fragment)
    assert str(tmp_path) in result.output  # the file is named in full


# --- the man-page aligner -----------------------------------------------------------------

ENGLISH_PAGE = r"""
.TH FOO 1
.SH NAME
foo \- frobnicate the bar
.SH DESCRIPTION
.B foo
frobnicates every bar it is given, one after another, until none is left.
.PP
When no bar is given,TABfoo reads the names of the bars from standard input.
.TP
\fB\-v\fR, \fB\-\-verbose\fR
print the name of each bar as it is frobnicated by the program
.SH OPTIONS
The options below change how the bars are chosen and in what order.
.PP
Options that take no value can be grouped behind a single dash.
.SH "EXIT STATUS"
Exit status is zero when every bar has been frobnicated successfully.
.SH COPYRIGHT
Copyright 2024 Free Software Foundation, Inc. License GPLv3 or later, no warranty.
.SH "SEE ALSO"
bar(1)
"""

GERMAN_PAGE = r"""
.TH FOO 1
.SH BEZEICHNUNG
foo \- den Bar frobnizieren
.SH BESCHREIBUNG
.B foo
frobniziert jeden Bar, der ihm übergeben wird, einen nach dem anderen, bis keiner übrig ist.
.PP
Wenn kein Bar übergeben wird, liest foo die Namen der Bars aus der Standardeingabe.
.TP
\fB\-v\fR, \fB\-\-verbose\fR
gibt den Namen jedes Bars aus, während das Programm ihn frobniziert
.SH OPTIONEN
Die folgenden Optionen ändern, wie die Bars ausgewählt werden; Optionen ohne Wert lassen sich gruppieren.
.SH RÜCKGABEWERT
Der Rückgabewert ist null, wenn jeder einzelne Bar, den das Programm bekommen hat, ohne jeden Fehler und
ohne jede Warnung vollständig frobniziert worden ist, und zwar in genau der Reihenfolge, in der die Bars
auf der Befehlszeile oder in der Standardeingabe standen.
.SH COPYRIGHT
Copyright 2024 Free Software Foundation, Inc. License GPLv3 or later, no warranty.
.SH "SIEHE AUCH"
bar(1)
.SH ÜBERSETZUNG
Die deutsche Übersetzung dieser Handbuchseite wurde von einem fleißigen Menschen erstellt.
"""


def _recipe(monkeypatch: pytest.MonkeyPatch):
    folder = Path(__file__).parents[1] / "recipes" / "corpora"
    monkeypatch.syspath_prepend(str(folder))  # it imports german_tokenizer from beside it
    spec = importlib.util.spec_from_file_location("parallel_manpages", folder / "parallel_manpages.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "parallel_manpages", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _page(root: Path, name: str, roff: str) -> None:
    (root / "man1").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "man1" / f"{name}.1.gz", "wt", encoding="utf-8") as f:
        f.write(roff)


def test_manpage_aligner_on_two_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(monkeypatch)
    english, german = tmp_path / "en", tmp_path / "de"
    _page(english, "foo", ENGLISH_PAGE.replace("TAB", "\t"))  # a tab in the text must not reach the TSV
    _page(german, "foo", GERMAN_PAGE)
    _page(english, "bar", ENGLISH_PAGE.replace(".SH COPYRIGHT", ".SH AUTHOR\nWritten by the bar team.\n.SH COPYRIGHT"))
    _page(german, "bar", GERMAN_PAGE)  # one section fewer than its English version: skipped
    _page(german, "only", GERMAN_PAGE)  # no English page of that name
    pairs, tally = recipe.build(english, german)
    assert pairs == [
        ("frobnicates every bar it is given, one after another, until none is left.",
         "frobniziert jeden Bar, der ihm übergeben wird, einen nach dem anderen, bis keiner übrig ist."),
        ("When no bar is given, foo reads the names of the bars from standard input.",
         "Wenn kein Bar übergeben wird, liest foo die Namen der Bars aus der Standardeingabe."),
        ("-v, --verbose print the name of each bar as it is frobnicated by the program",
         "-v, --verbose gibt den Namen jedes Bars aus, während das Programm ihn frobniziert"),
    ]  # OPTIONS: 2 paragraphs against 1; EXIT STATUS: German 3x as long; COPYRIGHT: untranslated
    assert (tally.pages, tally.pages_aligned, tally.sections, tally.sections_aligned) == (2, 1, 6, 5)
    assert (tally.paragraph_pairs, tally.kept) == (5, 3)
