"""`--method auto`: each row from the best source the inputs allow, and a record of which."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import bpe_tokenizer, make_text, random_hypernet, tiny_llama
from test_methods import make_context
from transplant.cli import app
from transplant.hypernet import catalog
from transplant.io.tokenizer import load_tokenizer
from transplant.methods import registry
from transplant.methods.auto import AutoOptions, readable
from transplant.methods.baselines import subword_rows
from transplant.methods.omp import OmpOptions, transfer
from transplant.vocab.matching import match_vocabularies

runner = CliRunner()


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


def rows(name: str, ctx, options, which: str = "input") -> torch.Tensor:
    return registry.get(name)().init_rows(dataclasses.replace(ctx, options=options, report={}), which, ctx.match.missing)


def test_a_given_hypernetwork_gives_every_row(match, tmp_path: Path) -> None:
    from transplant.hypernet.zett import ZettOptions

    ctx = make_context(match)
    hn = random_hypernet(ctx, tmp_path / "hn")
    auto = dataclasses.replace(ctx, options=AutoOptions(hypernet=str(hn)), report={})
    for which in ("input", "output"):
        got = registry.get("auto")().init_rows(auto, which, match.missing)
        assert torch.equal(got, rows("zett", ctx, ZettOptions(hypernet=str(hn)), which))
    assert auto.report["sources"] == {"input": {"zett": len(match.missing)}, "output": {"zett": len(match.missing)}}


def test_the_newest_registered_hypernetwork_that_fits_the_base_is_found(match, tmp_path: Path) -> None:
    from transplant.hypernet.zett import ZettOptions

    ctx = make_context(match)
    other = make_context(match, seed=1)
    other.base_input = other.base_input + 1.0  # another base of the same shape
    fits = random_hypernet(ctx, tmp_path / "fits")
    catalog.remember(fits, "zett", "base")
    catalog.remember(random_hypernet(other, tmp_path / "other"), "zett", "other")  # newer, for another base
    auto = dataclasses.replace(ctx, options=AutoOptions(), report={})
    got = registry.get("auto")().init_rows(auto, "input", match.missing)
    assert torch.equal(got, rows("zett", ctx, ZettOptions(hypernet=str(fits))))
    assert auto.report["hypernet"] == str(fits.resolve())
    unregistered = dataclasses.replace(ctx, options=AutoOptions(registered=False), report={}, cache={},
                                       donor_input=None, donor_output=None)
    registry.get("auto")().init_rows(unregistered, "input", match.missing)
    assert "hypernet" not in unregistered.report


def test_the_registered_hypernetwork_auto_picks_is_loaded_once(match, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the network loads it (the fit is the loader's check); its rows for both
    matrices then come from that load, not from reading the directory again."""
    from transplant.hypernet import zett

    monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path / "cache"))  # only this test's network registered
    ctx = make_context(match)
    hn = random_hypernet(ctx, tmp_path / "hn")
    catalog.remember(hn, "zett", "base")
    loads: list[Path] = []
    real = zett.load_hypernet
    monkeypatch.setattr(zett, "load_hypernet", lambda directory, *rest: loads.append(directory) or real(directory, *rest))
    auto = dataclasses.replace(ctx, options=AutoOptions(), report={}, cache={})
    for which in ("input", "output"):
        registry.get("auto")().init_rows(auto, which, match.missing)
    assert [p.resolve() for p in loads] == [hn.resolve()]
    assert auto.report["base_check"]["relation"] == "same"


def write_log(hn: Path, *bpb: float) -> None:
    """A training log as the trainer writes it: step lines, and an eval line per evaluation."""
    lines = [{"step": 1, "loss": 5.0}] + [{"step": 10 * (i + 1), "eval": {"bpb": b, "bpb/en/man": b}} for i, b in enumerate(bpb)]
    (hn / catalog.LOG_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_registered_hypernetwork_with_the_best_held_out_figure_wins_over_the_newest(match, tmp_path: Path) -> None:
    from transplant.hypernet.zett import ZettOptions

    ctx = make_context(match)
    unscored = random_hypernet(ctx, tmp_path / "unscored", seed=0)
    best = random_hypernet(ctx, tmp_path / "best", seed=1)
    worse = random_hypernet(ctx, tmp_path / "worse", seed=2)
    write_log(best, 2.4, 2.05)  # the last evaluation counts
    write_log(worse, 2.0, 2.09)
    for hn in (best, unscored, worse):  # worse is the newest
        catalog.remember(hn, "zett", "base")
    assert [Path(e.path).name for e in catalog.ranked("zett")] == ["best", "worse", "unscored"]
    auto = dataclasses.replace(ctx, options=AutoOptions(), report={})
    got = registry.get("auto")().init_rows(auto, "input", match.missing)
    assert auto.report["hypernet"] == str(best.resolve())
    assert torch.equal(got, rows("zett", ctx, ZettOptions(hypernet=str(best))))
    listed = runner.invoke(app, ["hypernet", "list"], terminal_width=300).output
    assert listed.index("2.050") < listed.index("2.090") and listed.count("best") == 1


def unreadable_of(match) -> torch.Tensor:
    return torch.tensor([not readable(match.new_vocab.surfaces[i]) for i in match.missing.tolist()])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_donor_tokens_it_explains_well_take_omp_rows_the_rest_the_guess(match, encoder_dir: Path,
                                                                          share: float) -> None:
    ctx = make_context(match)
    in_donor = match.missing < len(ctx.donor("output"))
    omp, result = transfer(dataclasses.replace(ctx, options=OmpOptions(fallback="none")), "output",
                           ctx.donor("output")[match.missing[in_donor]])
    threshold = 0.0 if share == 0.0 else 1.0 if share == 1.0 else float(result.rel_residual.quantile(share))
    options = AutoOptions(registered=False, omp_threshold=threshold, aux_model=str(encoder_dir))
    auto = dataclasses.replace(ctx, options=options, report={})
    got = registry.get("auto")().init_rows(auto, "output", match.missing)
    guess = rows("tokenadapt", ctx, registry.get("tokenadapt").Options(aux_model=str(encoder_dir)), "output")
    explained = torch.zeros_like(in_donor)
    explained[in_donor] = result.rel_residual <= threshold
    omp_all = torch.zeros_like(guess)
    omp_all[in_donor] = omp
    unreadable = unreadable_of(match)
    assert torch.equal(got[~explained & ~unreadable], guess[~explained & ~unreadable])
    assert torch.equal(got[explained & ~unreadable], omp_all[explained & ~unreadable])
    assert torch.equal(got[unreadable], subword_rows(ctx, "output", match.missing[unreadable]))
    counts = {"omp": int((explained & ~unreadable).sum()), "tokenadapt": int((~explained & ~unreadable).sum()),
              "subword": int(unreadable.sum())}
    assert auto.report["sources"]["output"] == {name: n for name, n in counts.items() if n}
    assert int(explained.sum()) == round(share * int(in_donor.sum()))  # none, about half, every donor token


@pytest.fixture(scope="module")
def mixed_match(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """NEW trained on words, Japanese, numbers and code: its missing tokens include pieces of
    characters, whole characters, digit runs and punctuation."""
    lines = make_text(seed=3, lines=200).splitlines()
    extra = ["日本語のテキストです。", "東京は大きい都市です。", "x = 12345 + 678 -> {y}", "    return f(a, b);"]
    path = tmp_path_factory.mktemp("mixed") / "mixed.txt"
    path.write_text("\n".join(f"{line} {extra[i % len(extra)]}" for i, line in enumerate(lines)))
    return match_vocabularies(bpe_tokenizer(corpus_file), bpe_tokenizer(path, vocab_size=400))


def test_special_tokens_never_take_omp_rows(corpus_file: Path, encoder_dir: Path) -> None:
    """Unused special tokens (Gemma-3 has 6,242) have untrained donor rows that anchors explain
    exactly; OMP's rows for them took probability from real tokens in a tied head."""
    new = bpe_tokenizer(corpus_file, vocab_size=320)
    new.add_special_tokens({"additional_special_tokens": [f"<unused{i}>" for i in range(6)]})
    match = match_vocabularies(bpe_tokenizer(corpus_file), new)
    unused = torch.tensor([i for i in match.missing.tolist() if match.new_vocab.special[i]])
    assert len(unused) == 6
    ctx = make_context(match)
    ctx.donor_output[unused] = ctx.donor_output[match.copy_new[:6]]  # an anchor's row: residual 0
    options = AutoOptions(registered=False, omp_threshold=1.0, aux_model=str(encoder_dir))
    auto = dataclasses.replace(ctx, options=options, report={})
    got = registry.get("auto")().init_rows(auto, "output", match.missing)
    guess = rows("tokenadapt", ctx, registry.get("tokenadapt").Options(aux_model=str(encoder_dir)), "output")
    is_unused = torch.isin(match.missing, unused)
    assert torch.equal(got[is_unused], guess[is_unused])
    assert auto.report["sources"]["output"]["omp"] == int((~is_unused).sum())


def test_tokens_a_text_encoder_cannot_read_take_subword_rows(mixed_match, encoder_dir: Path) -> None:
    """Pieces of a UTF-8 character and whitespace runs: their neighbours in the encoder's space
    are noise, their pieces exact (tokenadapt lost to subword on Japanese and code for this)."""
    ctx = dataclasses.replace(make_context(mixed_match), donor_input=None, donor_output=None)
    auto = dataclasses.replace(ctx, options=AutoOptions(registered=False, aux_model=str(encoder_dir)), report={})
    got = registry.get("auto")().init_rows(auto, "input", mixed_match.missing)
    guess = rows("tokenadapt", ctx, registry.get("tokenadapt").Options(aux_model=str(encoder_dir)), "input")
    unreadable = unreadable_of(mixed_match)
    assert 0 < int(unreadable.sum()) < len(unreadable)
    assert torch.equal(got[unreadable], subword_rows(ctx, "input", mixed_match.missing[unreadable]))
    assert torch.equal(got[~unreadable], guess[~unreadable])
    assert not torch.equal(got[unreadable], guess[unreadable])
    assert auto.report["sources"]["input"] == {"tokenadapt": int((~unreadable).sum()), "subword": int(unreadable.sum())}


@pytest.mark.parametrize("surface, expected", [
    (" the".encode(), True), ("日本".encode(), True), ("Straße".encode(), True), (b" 123", True), (b"->", True),
    ("日".encode()[:2], False), (b"\xe3", False), (b"    ", False), (b"\n\t  ", False), ("\u00a0".encode(), False),
])
def test_readable_means_whole_characters_not_only_whitespace(surface: bytes, expected: bool) -> None:
    assert readable(surface) is expected


def test_without_a_text_encoder_subword_is_the_floor(match) -> None:
    """Offline and never fetched (this suite has no index), the default MiniLM is unavailable."""
    ctx = dataclasses.replace(make_context(match), donor_input=None, donor_output=None)
    auto = dataclasses.replace(ctx, options=AutoOptions(registered=False), report={})
    got = registry.get("auto")().init_rows(auto, "input", match.missing)
    assert torch.equal(got, subword_rows(ctx, "input", match.missing))
    assert auto.report["sources"] == {"input": {"subword": len(match.missing)}}
    assert auto.report["tokenadapt_unavailable"]


def test_auto_is_the_default_and_loads_new_s_own_model_as_donor_only_for_omp_rows(
        corpus_file: Path, sp_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP rows are off by default, so the donor is not loaded then (a Gemma-3-270M donor: ~7 s
    and 0.7 GB for nothing); ``--omp-threshold`` above 0 loads NEW's own model and uses it."""
    monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path / "cache"))  # no hypernetwork registered by other tests
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    donor = tiny_llama(bpe_tokenizer(corpus_file, vocab_size=360), tmp_path / "donor", tied=True, seed=5)
    runs = ((sp_model, [], False, False), (donor, [], False, False), (donor, ["--omp-threshold", "1.0"], True, True))
    for i, (new, flags, expect_donor, expect_omp) in enumerate(runs):
        out = tmp_path / f"out-{i}"
        result = runner.invoke(app, ["model", str(base), "--tokenizer", str(new), "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "transplant.json").read_text())
        assert record["method"] == "auto" and (record["donor"] is not None) == expect_donor
        assert ("loading donor" in record["timings"]) == expect_donor
        assert ("omp" in record["method_report"]["sources"]["input"]) == expect_omp


def test_hypernet_list_shows_what_was_registered(match, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path / "cache"))
    assert "no hypernetworks yet" in runner.invoke(app, ["hypernet", "list"]).output
    hn = random_hypernet(make_context(match), tmp_path / "hn")
    catalog.remember(hn, "zett", "smollm2-135m")
    listed = runner.invoke(app, ["hypernet", "list"], terminal_width=300).output
    assert "smollm2-135m" in listed and "zett" in listed
    catalog.remember(hn, "zett", "smollm2-135m")  # again: still one entry
    assert len(catalog.entries()) == 1
