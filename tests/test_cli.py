"""The command line: happy path, and every bad input as one line, exit code 2, no OUT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from transplant.cli import app
from conftest import bpe_tokenizer, tiny_llama

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, out: Path, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and fragment in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def test_model_command_and_method_flags(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("model", str(base_model), "--tokenizer", str(sp_model), "-o", str(out), "--method", "subword",
                 "--subword-weighting", "length", "--json")
    assert result.exit_code == 0, result.output
    assert (out / "transplant.json").exists() and '"copied"' in result.output
    assert '"subword_weighting": "length"' in (out / "transplant.json").read_text()


def test_recipe(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "out"
    recipe.write_text(f"base: {base_model}\ntokenizer: {sp_model}\nmethod: subword\noptions:\n  subword_weighting: first\nout: {out}\n")
    assert run("model", "--recipe", str(recipe)).exit_code == 0
    assert '"subword_weighting": "first"' in (out / "transplant.json").read_text()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("- base\n- out\n", "YAML mapping"),
        ("tokenizr: x\n", "unknown key 'tokenizr'"),
        ("options: [k, 8]\n", "options must be a mapping"),
        ("seed: abc\n", "seed must be an integer"),
        ("seed: 1.5\n", "seed must be an integer"),
        ("seed: true\n", "seed must be an integer"),
        ("method: 3\n", "method must be a string"),
        ("out: [a, b]\n", "out must be a string"),
        ("donor: {a: 1}\n", "donor must be a string"),
    ],
)
def test_bad_recipe_is_one_line_before_loading(sp_model: Path, tmp_path: Path, body: str, fragment: str) -> None:
    """The recipe names a base that does not exist: the error must be about the recipe, so
    it was checked before anything was loaded."""
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(body)
    result = run("model", str(tmp_path / "no-base"), "-t", str(sp_model), "-o", str(out), "--recipe", str(recipe))
    assert_user_error(result, out, fragment)


def test_bad_method_option_fails_before_loading(sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("model", str(tmp_path / "no-base"), "-t", str(sp_model), "-o", str(out), "-m", "tokenadapt",
                 "--temperature", "0")
    assert_user_error(result, out, "--temperature")


def test_methods_lists_registry() -> None:
    result = run("methods")
    assert result.exit_code == 0 and "subword" in result.output and "--subword-weighting" in result.output


def test_missing_path(sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(run("model", str(tmp_path / "nope"), "-t", str(sp_model), "-o", str(out)), out, "no such file")


def test_corrupt_safetensors(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(base_model, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    out = tmp_path / "out"
    assert_user_error(run("model", str(broken), "-t", str(sp_model), "-o", str(out)), out, "corrupt safetensors")


def test_non_tokenizer_file(base_model: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    out = tmp_path / "out"
    assert_user_error(run("model", str(base_model), "-t", str(bogus), "-o", str(out)), out, "not a tokenizer")
    fake_model = tmp_path / "fake.model"
    fake_model.write_text("hello")
    assert_user_error(run("model", str(base_model), "-t", str(fake_model), "-o", str(out)), out, "SentencePiece")


def test_existing_out_is_refused_and_kept(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("model", str(base_model), "-t", str(sp_model), "-o", str(out))
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    forced = run("model", str(base_model), "-t", str(sp_model), "-o", str(out), "--force")
    assert forced.exit_code == 2 and "not written by transplant" in forced.output  # not ours: never replaced
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty directory loses nothing
    assert run("model", str(base_model), "-t", str(sp_model), "-o", str(out), "--force").exit_code == 0
    assert (out / "config.json").exists()


def test_tokenizer_ids_beyond_base_rows(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    small = bpe_tokenizer(corpus_file, vocab_size=400)  # more ids than the model has rows
    small.save_pretrained(base)
    out = tmp_path / "out"
    assert_user_error(run("model", str(base), "-t", str(sp_model), "-o", str(out)), out, "embedding rows")


def test_pickle_needs_allow_pickle(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(base_model, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    out = tmp_path / "out"
    assert_user_error(run("model", str(pickled), "-t", str(sp_model), "-o", str(out)), out, "--allow-pickle")
    assert run("model", str(pickled), "-t", str(sp_model), "-o", str(out), "--allow-pickle").exit_code == 0


def test_unknown_method_and_option(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(run("model", str(base_model), "-t", str(sp_model), "-o", str(out), "-m", "nope"), out, "unknown method")
    assert_user_error(run("model", str(base_model), "-t", str(sp_model), "-o", str(out), "--k", "3"), out, "unknown option")
    assert_user_error(run("model", str(base_model), "-t", str(sp_model), "-o", str(out), "-m", "subword", "--subword-weighting", "x"), out, "must be one of")


def export_caught_mid_write(corpus_file: Path, sp_model: Path, tmp_path: Path) -> subprocess.Popen:
    """A CLI transplant of a model large enough to catch, returned once its temp dir appears.
    One shard, rewritten whole: a sharded body would be hard-linked in an instant."""
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False, hidden=512, layers=6)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "model", str(base), "-t", str(sp_model), "-o", str(tmp_path / "out")],
                            cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("out.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail("the export finished before it could be interrupted")
    return proc


def test_killed_mid_write_leaves_no_out(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    """SIGKILL the CLI as soon as its temp dir appears: OUT must not exist afterwards."""
    proc = export_caught_mid_write(corpus_file, sp_model, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()


def test_sigterm_mid_write_removes_the_temporary(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    """SIGTERM (kill, a timeout, a batch scheduler) cleans up like Ctrl-C: no OUT.tmp-<pid> left."""
    proc = export_caught_mid_write(corpus_file, sp_model, tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_temporaries_of_processes_that_are_gone_are_removed(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    """A SIGKILL leaves OUT.tmp-<pid> (gigabytes on real models): the next write of OUT removes
    it once that process is gone, and leaves alone the one of a process still writing."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (gone.pid, alive.pid):
            (tmp_path / f"out.tmp-{pid}").mkdir()
            (tmp_path / f"out.tmp-{pid}" / "model.safetensors").write_bytes(b"partial")
        assert run("model", str(base_model), "-t", str(sp_model), "-o", str(tmp_path / "out")).exit_code == 0
        assert [p.name for p in tmp_path.glob("out.tmp-*")] == [f"out.tmp-{alive.pid}"]
    finally:
        alive.kill()
        alive.wait()


@pytest.fixture(scope="module")
def donor_model(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A donor with its own, larger tokenizer and another hidden size than the base."""
    return tiny_llama(bpe_tokenizer(corpus_file, vocab_size=420), tmp_path_factory.mktemp("donor"), tied=False, hidden=48)


def test_omp_from_a_donor_model(base_model: Path, donor_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("model", str(base_model), "--tokenizer", str(donor_model), "--method", "omp", "--k", "8", "-o", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "transplant.json").read_text())
    assert record["donor"] == str(donor_model)  # defaulted to --tokenizer
    assert (record["options"]["ridge"], record["options"]["fallback_threshold"]) == (0.03, 0.55)  # auto, as used
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.shape[0] == 420


def test_omp_records_the_donor_given(base_model: Path, donor_model: Path, tmp_path: Path) -> None:
    donor = shutil.copytree(donor_model, tmp_path / "donor")
    out = tmp_path / "out"
    result = run("model", str(base_model), "-t", str(donor_model), "--donor", str(donor), "-m", "omp", "--k", "8",
                 "--pool", "0", "-o", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "transplant.json").read_text())
    assert record["donor"] == str(donor) and record["tokenizer"] == str(donor_model)
    assert (record["options"]["ridge"], record["options"]["fallback_threshold"]) == (0.0, 0.3)  # exact mode's auto


def test_omp_bad_donor_and_options(base_model: Path, donor_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    omp = ("--method", "omp", "-o", str(out))
    assert_user_error(run("model", str(base_model), "-t", str(sp_model), "--donor", str(donor_model), *omp), out,
                      "not the new tokenizer")
    assert_user_error(run("model", str(base_model), "-t", str(sp_model), *omp), out, "needs a donor model")
    assert_user_error(run("model", str(base_model), "-t", str(donor_model), "--k", "100000", *omp), out,
                      "number of anchors")
    assert_user_error(run("model", str(base_model), "-t", str(donor_model), "--k", "8", "--pool", "4", *omp), out,
                      "--pool")
