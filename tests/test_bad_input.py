"""The catalogue of bad input (docs/troubleshooting.md): each case exits with code 2 and
one line that says what and where, with no traceback, and runs nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from tests.support.spec_files import shipped, write_spec

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def run_cli(tmp_path: Path, args: list[str], env: dict | None = None) -> str:
    """Invoke `relxfer ARGS` against a sqlite store in tmp_path; assert exit 2, one line, no
    traceback and no run written; return the line."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if args[0] == "run" and "--tracking-uri" not in args:
        args = [*args, "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    result = CliRunner().invoke(main, args, env=env or {})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(uri)
        experiments = client.search_experiments()
        assert client.search_runs([e.experiment_id for e in experiments]) == []
    return lines[0].removeprefix("Error: ")


def belebele_spec(tmp_path: Path, data_dir: Path, edit=None) -> Path:
    raw = shipped("belebele-local.json")
    raw["data"]["source"]["path"] = str(data_dir)
    if edit:
        edit(raw)
    return write_spec(tmp_path, raw)


def test_unknown_language_code_suggests_close_codes(tmp_path, belebele_dir):
    spec = belebele_spec(tmp_path, belebele_dir, lambda r: r["eval"]["groups"][0].update(languages=["fra_Latm"]))
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /eval/groups/0/languages/0: unknown language code 'fra_Latm'; did you mean fra_Latn or afr_Latn?"
    )


def test_unknown_family_suggests_close_names(tmp_path, belebele_dir):
    spec = belebele_spec(
        tmp_path, belebele_dir, lambda r: r["eval"]["groups"][0].update(family="Semetic", languages=None)
    )
    raw = json.loads(spec.read_text())
    del raw["eval"]["groups"][0]["languages"]
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["validate", str(spec)]) == (
        f"{spec}: /eval/groups/0/family: unknown language family or genus 'Semetic'; did you mean Semitic?"
    )


def test_missing_model_directory(tmp_path):
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = str(tmp_path / "no-such-model")
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /models/0/source: model directory '{tmp_path / 'no-such-model'}' does not exist"
    )


def test_model_directory_without_a_checkpoint(tmp_path):
    (tmp_path / "empty-model").mkdir()
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = str(tmp_path / "empty-model")
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /models/0/source: model directory '{tmp_path / 'empty-model'}' has no config.json "
        "(not a transformers checkpoint)"
    )


def test_unknown_builtin_model(tmp_path):
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = "builtin:tiny-llma"
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /models/0/source: unknown built-in model 'builtin:tiny-llma'; did you mean builtin:tiny-llama?"
    )


def test_missing_data_directory(tmp_path):
    spec = belebele_spec(tmp_path, tmp_path / "nowhere")
    message = run_cli(tmp_path, ["run", str(spec)])
    assert message.startswith(f"Belebele data path {tmp_path / 'nowhere'} does not exist")


def test_unset_data_directory_variable(tmp_path):
    spec = tmp_path / "spec.json"
    shutil.copy(REPO / "specs" / "belebele-local.json", spec)
    assert run_cli(tmp_path, ["validate", str(spec)], env={"BELEBELE_DIR": ""}) == (
        f"{spec}: /data/source/path: environment variable BELEBELE_DIR is not set (set it to the Belebele directory or zip)"
    )


def data_copy(tmp_path: Path, belebele_dir: Path, codes) -> Path:
    """A data directory in tmp_path holding copies of the given languages' real files only."""
    data = tmp_path / "data"
    data.mkdir()
    for code in codes:
        shutil.copy(belebele_dir / f"{code}.jsonl", data)
    return data


def test_missing_language_file(tmp_path, belebele_dir):
    data = data_copy(tmp_path, belebele_dir, ("eng_Latn", "fra_Latn", "tur_Latn", "zho_Hans"))
    spec = belebele_spec(tmp_path, data)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{data}/arb_Arab.jsonl not found; languages available in {data}: eng_Latn, fra_Latn, tur_Latn, zho_Hans"
    )


def test_corrupt_jsonl_row_names_file_and_line(tmp_path, belebele_dir):
    data = data_copy(tmp_path, belebele_dir, ("arb_Arab", "eng_Latn", "tur_Latn", "zho_Hans"))
    lines = (belebele_dir / "fra_Latn.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[41] = lines[41][:50] + "\n"
    (data / "fra_Latn.jsonl").write_text("".join(lines), encoding="utf-8")
    spec = belebele_spec(tmp_path, data)
    message = run_cli(tmp_path, ["run", str(spec)])
    assert message.startswith(f"{data / 'fra_Latn.jsonl'}:42: invalid JSON: ")


def test_held_out_larger_than_available(tmp_path, belebele_dir):
    spec = belebele_spec(tmp_path, belebele_dir, lambda r: r["data"]["split"].update(held_out=901))
    message = run_cli(tmp_path, ["run", str(spec)])
    assert message.startswith("cannot hold out 901 question ids: only 900 are present in every language")


def test_label_set_not_matching_the_options(tmp_path):
    raw = shipped("smoke.json")
    raw["prompt"]["labels"] = ["A", "B", "C", "D", "E"]
    spec = write_spec(tmp_path, raw)
    assert (
        run_cli(tmp_path, ["run", str(spec)])
        == f"{spec}: /prompt/labels: 5 labels for 4 answer options; give exactly 4"
    )


def test_condition_that_needs_a_finetune(tmp_path):
    raw = shipped("smoke.json")
    del raw["finetune"]
    raw["conditions"] = ["baseline", "finetuned_cot"]
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /conditions: condition 'finetuned_cot' needs a fine-tune, but the spec declares no `finetune` section"
    )


def test_cache_directory_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(REPO / "specs" / "smoke.json"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--cache-dir",
            str(blocker / "cache"),
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: cache directory {blocker / 'cache'} is not writable (Not a directory); choose another with --cache-dir"
    )


def test_tracking_uri_with_a_bad_scheme(tmp_path):
    message = run_cli(tmp_path, ["run", str(REPO / "specs" / "smoke.json"), "--tracking-uri", "htp://127.0.0.1:5000"])
    assert message == (
        "tracking URI 'htp://127.0.0.1:5000': unsupported scheme 'htp'; use http://HOST:PORT for a tracking "
        "server or sqlite:///PATH.db for a local database"
    )


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_malformed_json_in_every_command(tmp_path, command):
    spec = tmp_path / "broken.json"
    spec.write_text('{\n  "name": "x",\n  "models": [}\n')
    assert run_cli(tmp_path, [command, str(spec)]) == f"{spec}:3:14: invalid JSON: Expecting value"


def tokenizer_model(tmp_path: Path, folder: str) -> Path:
    """A model directory holding one of the real tokenizers (no weights: refused before loading)."""
    from tests.support import shared_data

    source = shared_data.need(shared_data.TOKENIZERS / folder, f"the {folder} tokenizer")
    target = tmp_path / folder
    shutil.copytree(source, target)
    return target


def test_a_template_argument_the_models_template_does_not_read(tmp_path):
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = str(tokenizer_model(tmp_path, "qwen3-instruct-2507"))
    raw["models"][0]["chat_template"] = {"template_args": {"enable_thinking": False}}
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /models/0/chat_template/template_args: 'enable_thinking' is not an argument of model 'tiny''s "
        "chat template (it reads: content, reasoning_content)"
    )


def test_an_answer_prefix_the_tokenizer_cannot_encode(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "Answer": 1, ":": 2}, unk_token="[UNK]"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Whitespace(), decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[UNK]")
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    model = tmp_path / "word-level"
    tokenizer.save_pretrained(model)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = str(model)
    raw["prompt"]["chat_template"] = {"answer_prefix": "Réponse:"}
    spec = write_spec(tmp_path, raw)
    assert run_cli(tmp_path, ["run", str(spec)]) == (
        f"{spec}: /prompt/chat_template/answer_prefix: model 'tiny''s tokenizer cannot encode 'Réponse:' "
        "(it decodes back as '[UNK]:')"
    )


def test_a_template_that_cannot_continue_a_final_assistant_message(tmp_path):
    model = tokenizer_model(tmp_path, "qwen3")
    config = json.loads((model / "tokenizer_config.json").read_text())
    # Every assistant message becomes a fixed text: there is no place to score the label.
    config["chat_template"] = (
        "{% for m in messages %}{% if m.role == 'assistant' %}<reply>{% else %}{{ m.content }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<reply>{% endif %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    raw = shipped("smoke.json")
    raw["models"][0]["source"] = str(model)
    raw["prompt"]["chat_template"] = True
    spec = write_spec(tmp_path, raw)
    message = run_cli(tmp_path, ["run", str(spec)])
    assert message.startswith(
        f"{spec}: /prompt/chat_template: model 'tiny''s chat template cannot continue a final assistant message"
    )
