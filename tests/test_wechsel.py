"""WECHSEL: Procrustes, the dictionary readers (dictd in its real format, TSV), neighbour
search by kind, the method's rows by hand, and the command line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import WORDS, bpe_tokenizer, make_text, tiny_llama
from test_cli import assert_user_error, run
from test_methods import make_context
from transplant.inputs.dictionary import _number, read_dictionary
from transplant.errors import UserError
from transplant.inputs.fasttext import train_vectors
from transplant.methods import registry
from transplant.methods.wechsel import WORD_SPLIT_KEY, WechselOptions, alignment, dictionary_pairs, nearest, \
    split_words, surface_vectors
from transplant.maths.procrustes import procrustes
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies

DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
FREEDICT = Path("/usr/share/dictd/freedict-deu-eng.index")


def test_procrustes_recovers_a_rotation() -> None:
    g = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    source = torch.randn(300, 16, generator=g)
    target = source @ rotation + 0.01 * torch.randn(300, 16, generator=g)
    w = procrustes(source, target)
    assert torch.allclose(w, rotation, atol=1e-2)
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)


def base64(n: int) -> str:
    digits = ""
    while True:
        digits = DIGITS[n % 64] + digits
        n //= 64
        if not n:
            return digits


def write_dictd(folder: Path, compressed: bool = True) -> Path:
    """A FreeDict-style dictd dictionary: metadata, two entries, one entry under two headwords."""
    entries = [
        ("00databaseinfo", "00-database-info\nA test dictionary.\n\n"),
        ("haus", "Haus /haʊ̯s/ <neut, n, sg>\n [arch.] house <n>, home <n>\n   Synonym: {Gebäude}\n\n see: {Häuser}\n\n"),
        ("laufen", 'laufen /ˈlaʊ̯fən/ <v>\nrun <v>; walk (on foot)\n      "Ich laufe." - I run.\n\n'),
    ]
    data, index = b"", []
    for headword, text in entries:
        index.append(f"{headword}\t{base64(len(data))}\t{base64(len(text.encode()))}")
        data += text.encode()
    index.insert(2, f"häuser\t{index[1].split(chr(9), 1)[1]}")  # another headword, the same entry
    if compressed:
        (folder / "test-deu-eng.dict.dz").write_bytes(gzip.compress(data))
    else:
        (folder / "test-deu-eng.dict").write_bytes(data)
    (folder / "test-deu-eng.index").write_text("\n".join(index) + "\n")
    return folder / "test-deu-eng.index"


@pytest.mark.parametrize("compressed", [True, False], ids=["dict.dz", "dict"])
def test_dictd_reader(tmp_path: Path, compressed: bool) -> None:
    pairs = read_dictionary(write_dictd(tmp_path, compressed))
    assert pairs == [("house", "Haus"), ("home", "Haus"), ("run", "laufen"), ("walk", "laufen")]


@pytest.mark.skipif(not FREEDICT.is_file(), reason="apt-get install dict-freedict-deu-eng")
def test_base64_numbers_as_the_installed_freedict_writes_them() -> None:
    line = next(line for line in FREEDICT.read_text(encoding="utf-8").splitlines() if line.startswith("haus\t"))
    _, offset, length = line.split("\t")
    data = gzip.decompress(FREEDICT.with_suffix(".dict.dz").read_bytes())
    assert data[_number(offset): _number(offset) + _number(length)].decode().startswith("Haus /")
    assert base64(_number(offset)) == offset


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("haus\tB", "test-deu-eng.index:3: expected 'headword<TAB>offset<TAB>length'"),
     ("haus\tB!\tC", "test-deu-eng.index:3: expected"),
     ("haus\tzzzz\tC", "test-deu-eng.index:3: entry ends at byte")],
)
def test_broken_dictd_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    index = write_dictd(tmp_path)
    lines = index.read_text().splitlines()
    lines[2] = line
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=fragment):
        read_dictionary(index)


def test_tsv_reader_and_its_broken_line(tmp_path: Path) -> None:
    good = tmp_path / "d.tsv"
    good.write_text("house\tHaus\n\nrun\tlaufen\n")
    assert read_dictionary(good) == [("house", "Haus"), ("run", "laufen")]
    assert dictionary_pairs(str(good), reverse=True) == (("Haus", "house"), ("laufen", "run"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("house\tHaus\nrun laufen\n")
    with pytest.raises(UserError, match="bad.tsv:2: expected 'source<TAB>target'"):
        read_dictionary(bad)
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("house\tHaus\nbig\tgroß\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin.tsv:2: not UTF-8"):
        read_dictionary(latin)


def test_nearest_keeps_word_starts_and_continuations_apart() -> None:
    """The continuation query points at the word-start candidate, but may only take
    continuation pieces; without ``same_kind`` it takes the word start."""
    candidates = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    starts = torch.tensor([True, False, False])
    query, query_start = torch.tensor([[1.0, 0.1]]), torch.tensor([False])
    ids, sims = nearest(query, query_start, candidates, starts, k=1, same_kind=True, seed=0)
    assert ids.tolist() == [[1]]
    ids, _ = nearest(query, query_start, candidates, starts, k=1, same_kind=False, seed=0)
    assert ids.tolist() == [[0]]


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wechsel")
    (folder / "target.txt").write_text(make_text(0))
    (folder / "source.txt").write_text(make_text(1))
    (folder / "dict.tsv").write_text("".join(f"{w}\t{w}\n" for w in WORDS))
    return {"corpus": folder / "target.txt", "source": folder / "source.txt", "dictionary": folder / "dict.tsv"}


def test_rows_by_hand(match, texts: dict[str, Path]) -> None:
    """A placed token's row mixes the base rows of its 10 nearest base tokens of its kind by
    cosine in the aligned space (full matrix here, no FAISS), weights softmax(sim/0.1)."""
    options = WechselOptions(corpus=[str(texts["corpus"])], source_corpus=[str(texts["source"])],
                             dictionary=str(texts["dictionary"]), ft_bucket=10_000)
    ctx = make_context(match, options)
    rows = registry.get("wechsel")().init_rows(ctx, "input", match.missing)

    ft = options.fasttext_options(0)
    source = train_vectors([texts["source"]], split_words, WORD_SPLIT_KEY, ft)
    target = train_vectors([texts["corpus"]], split_words, WORD_SPLIT_KEY, ft)
    rotation, pairs = alignment(source, target, dictionary_pairs(str(texts["dictionary"]), False))
    assert pairs == len(WORDS)
    base = match.base_vocab
    base_vecs, base_has, base_start = surface_vectors(source, base.surfaces, [not s for s in base.special])
    aligned = F.normalize(base_vecs @ rotation, dim=1)
    checked = 0
    for i, new_id in enumerate(match.missing.tolist()):
        surface = match.new_vocab.surfaces[new_id]
        word = surface.decode("utf-8", "replace").strip()
        if match.new_vocab.special[new_id] or not word:
            continue
        query = F.normalize(torch.tensor(target.get_vector(word)), dim=0)
        allowed = base_has & (base_start == surface.startswith(b" "))
        sims = torch.where(allowed, aligned @ query, float("-inf"))
        top = sims.topk(10)
        expected = torch.softmax(top.values / 0.1, 0) @ ctx.base_input[top.indices]
        assert torch.allclose(rows[i], expected, atol=1e-4), word
        checked += 1
    assert checked > 20


def test_cli_tiny_model(corpus_file: Path, sp_model: Path, texts: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    out = tmp_path / "out"
    dictd = write_dictd(tmp_path)
    result = run("model", str(base), "-t", str(sp_model), "-o", str(out), "--method", "wechsel",
                 "--corpus", str(texts["corpus"]), "--source-corpus", str(texts["source"]),
                 "--source-corpus", str(corpus_file), "--dictionary", str(texts["dictionary"]), "--ft-bucket", "10000")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "transplant.json").read_text())
    assert record["options"]["same_kind"] is True
    report = record["method_report"]  # what the method did, for an audit
    assert report["placed"] + report["no_vector"] == record["counts"]["initialized"] and report["dictionary_pairs"] > 0
    for name, dictionary, error in (("dictd", write_dictd(tmp_path), None),  # house -> Haus (as haus), home -> Haus
                                    ("unrelated", tmp_path / "none.tsv", "no dictionary pair has both words")):
        (tmp_path / "none.tsv").write_text("xyzzy\tplugh\n")
        out = tmp_path / name
        result = run("model", str(base), "-t", str(sp_model), "-o", str(out), "--method", "wechsel",
                     "--corpus", str(texts["corpus"]), "--source-corpus", str(texts["source"]),
                     "--dictionary", str(dictionary), "--ft-bucket", "10000")
        if error is None:
            assert result.exit_code == 0, result.output
        else:
            assert_user_error(result, out, error)  # found after the model is read: still nothing at OUT


def test_cli_broken_dictionary_is_one_line_before_loading(sp_model: Path, texts: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.tsv"
    broken.write_text("house\tHaus\nhome\n")
    out = tmp_path / "out"
    result = run("model", str(tmp_path / "not-read"), "-t", str(sp_model), "-o", str(out), "--method", "wechsel",
                 "--corpus", str(texts["corpus"]), "--source-corpus", str(texts["source"]), "--dictionary", str(broken))
    assert_user_error(result, out, "broken.tsv:2: expected 'source<TAB>target'")
    result = run("model", str(tmp_path / "not-read"), "-t", str(sp_model), "-o", str(out), "--method", "wechsel",
                 "--corpus", str(texts["corpus"]))
    assert_user_error(result, out, "--source-corpus")
