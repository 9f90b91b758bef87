"""fastText vectors with gensim: trained on a corpus (and cached), or loaded from a file.

Three methods need them: FOCUS trains *token* vectors on text tokenized by the new
tokenizer (each token a "word"), WECHSEL and HyperOFA train *word* vectors whose subword
n-grams give a vector to any string. Training takes minutes, so a trained model is cached
under a key of the corpus bytes, how the text was split into words, and the options.

The corpus is split into words once, streamed into a temporary file of space-separated
words (never the whole corpus in memory) that gensim trains on with ``corpus_file=``.
Words are escaped so a token that contains a space or is empty still is one word.

Reproducibility: gensim is deterministic for a fixed seed with one worker thread; with
more workers the thread scheduling changes the result (gensim's own documentation), so
``workers`` defaults to 1 and a faster, non-reproducible run is an explicit choice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gensim.models import FastText, KeyedVectors
from gensim.models.fasttext import load_facebook_vectors

from transplant.io.atomic import atomic_path
from transplant.io.cache import cache_dir
from transplant.inputs.corpus import check_corpora, text_lines, texts
from transplant.errors import UserError

Splitter = Callable[[list[str]], list[list[str]]]  # a batch of lines -> the words of each line
_BATCH = 1000  # lines split per call: a tokenizer's encode_batch runs them in parallel


@dataclass(frozen=True)
class FastTextOptions:
    """gensim ``FastText`` settings (CBOW, the FOCUS/WECHSEL defaults)."""

    dim: int = 100
    epochs: int = 3
    min_count: int = 10
    window: int = 5
    min_n: int = 3  # character n-grams give any string a vector; max_n 0 turns them off
    max_n: int = 6
    workers: int = 1  # > 1 is faster but not reproducible
    seed: int = 0
    bucket: int = 2_000_000  # hashed n-gram rows (gensim's default): 800 MB at dim 100

    def __post_init__(self) -> None:
        if min(self.dim, self.epochs, self.min_count, self.window, self.workers, self.bucket) < 1:
            raise UserError("fastText dim, epochs, min_count, window, workers and bucket must be at least 1")
        if self.max_n and not 1 <= self.min_n <= self.max_n:
            raise UserError(f"fastText n-grams need 1 <= min_n <= max_n, got {self.min_n} and {self.max_n}")


@dataclass(frozen=True)
class CorpusVectorOptions:
    """Method options of a method that trains fastText on text (FOCUS, WECHSEL): subclass
    it. The corpus is checked when the options are built, before any model is read."""

    corpus: list[str] = field(default_factory=list)
    ft_dim: int = 100
    ft_epochs: int = 3
    ft_min_count: int = 10
    ft_ngrams: bool = True  # character n-grams (3-6) of each word
    ft_bucket: int = 2_000_000
    ft_workers: int = 1

    def __post_init__(self) -> None:
        self.fasttext_options(0)  # its own checks of the numbers
        if self.corpus:
            check_text(self.corpus)

    def fasttext_options(self, seed: int) -> FastTextOptions:
        return FastTextOptions(dim=self.ft_dim, epochs=self.ft_epochs, min_count=self.ft_min_count,
                               max_n=6 if self.ft_ngrams else 0, workers=self.ft_workers, seed=seed,
                               bucket=self.ft_bucket)


def check_text(corpus: Sequence[Path | str]) -> list[Path]:
    """The corpus paths, refused with one line if missing, of an unknown kind, empty, or not
    UTF-8 (naming the file and line): a streaming pass, cheap next to training."""
    paths = check_corpora(corpus)
    for path in paths:
        if not sum(bool(line.strip()) for line in text_lines(path)):  # reads every line: all are checked
            raise UserError(f"{path}: the corpus is empty")
    return paths


def escape(word: str) -> str:
    """A word gensim's ``corpus_file`` reader keeps whole: no whitespace, never empty."""
    return "".join(c if not c.isspace() else f"\\u{ord(c):04x}" for c in word.replace("\\", "\\\\")) or "\\e"


def lines(paths: Sequence[Path]) -> Iterable[str]:
    """The non-empty lines of every document of ``paths``, streamed."""
    for path in paths:
        for text in texts(path):
            yield from (line for line in text.splitlines() if line.strip())


def corpus_digest(paths: Sequence[Path]) -> str:
    """sha256 over the corpora's bytes (and their order): the cache key's corpus part."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def write_words(paths: Sequence[Path], split: Splitter, out: Path) -> int:
    """Split every line of ``paths`` into words and write them space-separated, one line per
    input line; returns how many words were written."""
    total = 0
    batch: list[str] = []
    with out.open("w", encoding="utf-8") as f:
        def flush() -> None:
            nonlocal total
            for words in split(batch):
                if words:
                    f.write(" ".join(map(escape, words)) + "\n")
                    total += len(words)
            batch.clear()

        for line in lines(paths):
            batch.append(line)
            if len(batch) == _BATCH:
                flush()
        flush()
    return total


def train_vectors(corpus: Sequence[Path | str], split: Splitter, split_key: str,
                  options: FastTextOptions) -> KeyedVectors:
    """fastText vectors of the words ``split`` finds in ``corpus``; keys are the words themselves.

    ``split_key`` names the splitting (a tokenizer's hash, or a word splitter's name and
    version): with the corpus digest and ``options`` it keys the cache, so a second run
    with the same inputs loads instead of training. Beside the vectors, ``meta.json``
    records what was trained and how long splitting and training took.
    """
    paths = check_text(corpus)
    key = hashlib.sha256(json.dumps([corpus_digest(paths), split_key, asdict(options)]).encode()).hexdigest()[:24]
    cached = cache_dir() / "fasttext" / key  # a directory: gensim saves big arrays beside its file
    if not (cached / "vectors.kv").is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            words_file = Path(tmp) / "words.txt"
            started = time.perf_counter()
            total = write_words(paths, split, words_file)
            split_seconds = time.perf_counter() - started
            if total == 0:
                raise UserError(f"no words to train fastText on in {', '.join(map(str, paths))}")
            model = FastText(
                vector_size=options.dim, window=options.window, min_count=options.min_count, sg=0,
                min_n=options.min_n, max_n=options.max_n, workers=options.workers, seed=options.seed,
                bucket=options.bucket)
            model.build_vocab(corpus_file=str(words_file))
            if not model.wv.key_to_index:
                raise UserError(f"no word occurs {options.min_count} times (fastText min_count) in "
                                f"{', '.join(map(str, paths))}")
            model.train(corpus_file=str(words_file), epochs=options.epochs,
                        total_examples=model.corpus_count, total_words=model.corpus_total_words)
            meta = {"corpus": list(map(str, paths)), "split_key": split_key, "options": asdict(options),
                    "words": total, "vocabulary": len(model.wv), "split_seconds": round(split_seconds, 1),
                    "train_seconds": round(time.perf_counter() - started - split_seconds, 1)}
            with atomic_path(cached, existing="keep") as target:
                target.mkdir()
                model.wv.save(str(target / "vectors.kv"))
                (target / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
    vectors = KeyedVectors.load(str(cached / "vectors.kv"))
    return _unescaped(vectors)


def unescape(key: str) -> str:
    """The word :func:`escape` turned into ``key``."""
    if key == "\\e":
        return ""
    if "\\" not in key:
        return key
    return key.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _unescaped(vectors: KeyedVectors) -> KeyedVectors:
    """Rename the escaped keys back to the words they stand for."""
    vectors.index_to_key = [unescape(k) for k in vectors.index_to_key]
    vectors.key_to_index = {k: i for i, k in enumerate(vectors.index_to_key)}
    return vectors


def load_vectors(path: Path | str) -> KeyedVectors:
    """Vectors a user already has: a Facebook fastText ``.bin``, a word2vec ``.vec``/``.txt``
    (text) or a gensim ``.kv``/``.model`` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"word vectors not found: {path}")
    try:
        if path.suffix == ".bin":
            return load_facebook_vectors(str(path))
        if path.suffix in (".vec", ".txt"):
            return KeyedVectors.load_word2vec_format(str(path), binary=False)
        if path.suffix == ".model":
            return FastText.load(str(path)).wv
        if path.suffix == ".kv":
            return KeyedVectors.load(str(path))
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"cannot read word vectors {path}: {e}") from None
    raise UserError(f"word vectors must be .bin (fastText), .vec/.txt (word2vec text) or .kv/.model (gensim), "
                    f"got {path.name}")
