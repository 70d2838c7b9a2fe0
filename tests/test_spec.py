"""Spec loading: schema validation with JSON paths, defaults, semantic checks; CLI exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.errors import SpecError
from relxfer.spec.load import fill_defaults, load_schema, load_spec
from tests.support.spec_files import write_spec

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.json"


def smoke_raw() -> dict:
    return json.loads(SMOKE.read_text())


def cli_error(path: Path, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_smoke_spec_is_valid_and_defaults_are_filled():
    spec = load_spec(SMOKE)
    assert spec.name == "smoke"
    assert spec.finetune is not None
    assert spec.finetune.lora.target_modules == "all-linear"  # schema default
    assert spec.finetune.quantization.quant_type == "nf4"
    assert spec.finetune.quantization.compute_dtype == "float32"  # the spec's own value wins
    assert spec.prompt.chat_template is False
    assert spec.data.split.unit == "question"
    assert spec.models[0].trust_remote_code is False
    assert [g.role for g in spec.groups] == ["related", "control"]
    assert spec.groups[0].languages == ("syn_Rela", "syn_Relb", "syn_Relc", "syn_Reld", "syn_Rele")


def test_every_schema_property_has_a_description():
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if "description" not in sub and "$ref" not in sub:
                    missing.append(f"{where}/{name}")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(load_schema(), "")
    assert missing == []


def test_wrong_type_names_the_json_path(tmp_path):
    raw = smoke_raw()
    raw["finetune"]["lora"]["r"] = "eight"
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == f"Error: {path}: /finetune/lora/r: 'eight' is not of type 'integer'"


def test_minimum_violation_matches_the_documented_message(tmp_path):
    raw = smoke_raw()
    raw["finetune"]["lora"]["r"] = -1
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == f"Error: {path}: /finetune/lora/r: -1 is less than the minimum of 1"


def test_unknown_key(tmp_path):
    raw = smoke_raw()
    raw["finetune"]["training"]["learning_rat"] = 0.1
    path = write_spec(tmp_path, raw)
    assert (
        cli_error(path) == f"Error: {path}: /finetune/training: unknown key 'learning_rat'; did you mean learning_rate?"
    )


def test_missing_required_field(tmp_path):
    raw = smoke_raw()
    del raw["models"][0]["source"]
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == f"Error: {path}: /models/0: 'source' is a required property"


def test_missing_top_level_field(tmp_path):
    raw = smoke_raw()
    del raw["conditions"]
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == f"Error: {path}: /: 'conditions' is a required property"


def test_malformed_json_gives_line_and_column(tmp_path):
    path = write_spec(tmp_path, '{\n  "name": "x",\n  "data": {,}\n}')
    assert cli_error(path) == f"Error: {path}:3:12: invalid JSON: Expecting property name enclosed in double quotes"


def test_missing_spec_file(tmp_path):
    assert cli_error(tmp_path / "nope.json") == f"Error: {tmp_path / 'nope.json'}: no such spec file"


def test_debug_flag_shows_the_traceback(tmp_path):
    path = write_spec(tmp_path, "{")
    result = CliRunner().invoke(main, ["--debug", "validate", str(path)])
    assert isinstance(result.exception, SpecError)


def test_undeclared_synthetic_language_suggests_close_codes(tmp_path):
    raw = smoke_raw()
    raw["eval"]["groups"][0]["languages"] = ["syn_Rela", "syn_Relf"]
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == (
        f"Error: {path}: /eval/groups/0/languages/1: language 'syn_Relf' is not declared in "
        f"/data/source/languages; did you mean syn_Rele, syn_Reld or syn_Relc?"
    )


def test_synthetic_shape_that_cannot_make_a_passage(tmp_path):
    raw = smoke_raw()
    raw["data"]["source"]["questions_per_passage"] = 4
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == (
        f"Error: {path}: /data/source/questions_per_passage: questions_per_passage (4) must be between 1 and facts_per_passage (3)"
    )


def test_finetuned_condition_needs_a_finetune_section(tmp_path):
    raw = smoke_raw()
    del raw["finetune"]
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == (
        f"Error: {path}: /conditions: condition 'finetuned' needs a fine-tune, but the spec declares no `finetune` section"
    )


def test_label_count_must_match_the_options(tmp_path):
    raw = smoke_raw()
    raw["prompt"]["labels"] = ["1", "2", "3"]
    path = write_spec(tmp_path, raw)
    assert cli_error(path) == f"Error: {path}: /prompt/labels: 3 labels for 4 answer options; give exactly 4"


def test_code_cannot_be_named_in_a_spec(tmp_path):
    raw = smoke_raw()
    raw["models"][0]["loader"] = "mypackage.evil:load"
    path = write_spec(tmp_path, raw)
    assert cli_error(path).startswith(f"Error: {path}: /models/0: unknown key 'loader'; allowed here: name, source, ")


def test_group_by_family_for_synthetic_sources(tmp_path):
    raw = smoke_raw()
    raw["eval"]["groups"] = [
        {"name": "A", "role": "related", "family": "Synthetic-A"},
        {"name": "B", "role": "control", "family": "Synthetic-B"},
    ]
    spec = load_spec(write_spec(tmp_path, raw))
    # The family selects every declared language of it, the training language included.
    assert spec.groups[0].languages == ("syn_Base", "syn_Rela", "syn_Relb", "syn_Relc", "syn_Reld", "syn_Rele")
    assert spec.groups[1].languages == ("syn_Ctla", "syn_Ctlb", "syn_Ctlc", "syn_Ctld", "syn_Ctle")


def test_fill_defaults_does_not_touch_its_input():
    raw = smoke_raw()
    before = copy.deepcopy(raw)
    filled = fill_defaults(raw)
    assert raw == before
    assert filled["evaluation"]["batch_size"] is None
    assert "finetune" in filled


def test_spec_hash_ignores_prose_but_not_settings(tmp_path):
    raw = smoke_raw()
    base = load_spec(write_spec(tmp_path, raw, "a.json")).hash
    raw["description"] = "something else"
    assert load_spec(write_spec(tmp_path, raw, "b.json")).hash == base
    raw["finetune"]["training"]["learning_rate"] = 0.01
    assert load_spec(write_spec(tmp_path, raw, "c.json")).hash != base


@pytest.mark.parametrize("spec_file", sorted((REPO / "specs").glob("*.json")))
def test_every_shipped_spec_validates(spec_file, monkeypatch, tmp_path):
    monkeypatch.setenv("BELEBELE_DIR", str(tmp_path))
    monkeypatch.setenv("SIB200_DIR", str(tmp_path))
    load_spec(spec_file)


def test_prompt_options_are_checked_at_validate_time(tmp_path):
    raw = smoke_raw()
    raw["prompt"] = {"preset": "lm-eval-belebele", "instruction_language": "target"}
    path = write_spec(tmp_path, raw)
    message = cli_error(path)
    assert message.startswith(
        f"Error: {path}: /prompt: prompt.instruction_language 'target' needs a preset with an instruction"
    )
