"""`relxfer validate` catches every mistake of a spec before anything runs: built-in model names,
family labels, language-code typos of any shape, duplicate keys, absurd nesting, mistakes inside
an object chosen by `kind`; and it reports all of a spec's problems at once, one line each, in
file order, with exit code 2."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.spec.json_reader import MAX_DEPTH
from relxfer.spec.load import load_schema
from relxfer.spec.schema_problems import schema_problems

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def spec_file(tmp_path: Path, name: str, edit=None) -> Path:
    raw = json.loads((REPO / "specs" / name).read_text())
    if edit:
        edit(raw)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def errors(path: Path, command: str = "validate") -> list[str]:
    """The lines `relxfer COMMAND PATH` prints; asserts exit 2 and no traceback."""
    result = CliRunner().invoke(main, [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert all(line.startswith("Error: ") for line in lines), result.output
    return [line.removeprefix("Error: ") for line in lines]


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_unknown_builtin_model_fails_before_run(tmp_path, command):
    path = spec_file(tmp_path, "smoke.json", lambda r: r["models"][0].update(source="builtin:tiny-lama"))
    assert errors(path, command) == [
        f"{path}: /models/0/source: unknown built-in model 'builtin:tiny-lama'; did you mean builtin:tiny-llama?"
    ]


def test_mistyped_builtin_scheme(tmp_path):
    path = spec_file(tmp_path, "smoke.json", lambda r: r["models"][0].update(source="bultin:tiny-llama"))
    assert errors(path) == [
        f"{path}: /models/0/source: 'bultin:tiny-llama' is not a hub id (org/name), a local directory or a "
        f"built-in model; did you mean builtin:tiny-llama?"
    ]


def test_builtin_names_match_the_builders():
    from relxfer.models.loading import BUILTIN_MODELS
    from relxfer.spec.builtins import BUILTIN_MODEL_IDS

    assert sorted(BUILTIN_MODELS) == list(BUILTIN_MODEL_IDS)


def test_family_label_beside_languages_is_checked(tmp_path):
    path = spec_file(tmp_path, "full.json", lambda r: r["eval"]["groups"][0].update(family="Semetic"))
    assert errors(path) == [
        f"{path}: /eval/groups/0/family: unknown language family or genus 'Semetic'; did you mean Semitic?"
    ]


def test_each_name_of_a_combined_family_label_is_checked(tmp_path):
    path = spec_file(tmp_path, "full.json", lambda r: r["eval"]["groups"][1].update(family="non-Semetic/Japonic"))
    assert errors(path) == [
        f"{path}: /eval/groups/1/family: unknown language family or genus 'Semetic' in 'non-Semetic/Japonic'; "
        f"did you mean Semitic?"
    ]


def test_synthetic_family_label_must_be_declared(tmp_path):
    path = spec_file(tmp_path, "smoke.json", lambda r: r["eval"]["groups"][1].update(family="Synthetic-C"))
    assert errors(path) == [
        f"{path}: /eval/groups/1/family: no synthetic language has family 'Synthetic-C'; "
        f"did you mean Synthetic-B or Synthetic-A?"
    ]


@pytest.mark.parametrize(
    "spec, code, message",
    [
        (
            "smoke.json",
            "syn_Rel",
            "language 'syn_Rel' is not declared in /data/source/languages; "
            "did you mean syn_Rele, syn_Reld or syn_Relc?",
        ),
        ("full.json", "fra_Latm", "unknown language code 'fra_Latm'; did you mean fra_Latn or afr_Latn?"),
        ("full.json", "fra_Lat", "unknown language code 'fra_Lat'; did you mean fra_Latn or afr_Latn?"),
    ],
)
def test_language_code_typo_of_any_shape_gets_a_did_you_mean(tmp_path, spec, code, message):
    path = spec_file(tmp_path, spec, lambda r: r["eval"]["groups"][0]["languages"].__setitem__(0, code))
    assert errors(path) == [f"{path}: /eval/groups/0/languages/0: {message}"]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path):
    def edit(raw):
        raw["data"]["source"]["n_pasages"] = 3
        raw["eval"]["groups"][0]["languages"][0] = "syn_Rel"
        raw["models"][0]["source"] = "builtin:tiny-lama"
        raw["models"][0]["engines"] = {"evaluate": {"kind": "locl"}}
        raw["finetune"]["lora"]["r"] = -1
        raw["finetune"]["lora"]["target_modules"] = "all"
        raw["finetune"]["training"]["learning_rat"] = 0.1
        raw["conditions"] = ["baseline", "finetunned"]
        raw["prompt"]["labels"] = ["1", "2", "3"]

    path = spec_file(tmp_path, "smoke.json", edit)
    assert errors(path) == [
        f"{path}: {line}"
        for line in [
            "/data/source: unknown key 'n_pasages'; did you mean n_passages?",
            "/eval/groups/0/languages/0: language 'syn_Rel' is not declared in /data/source/languages; "
            "did you mean syn_Rele, syn_Reld or syn_Relc?",
            "/models/0/source: unknown built-in model 'builtin:tiny-lama'; did you mean builtin:tiny-llama?",
            "/models/0/engines/evaluate/kind: unknown kind 'locl'; did you mean local?",
            "/finetune/lora/r: -1 is less than the minimum of 1",
            "/finetune/lora/target_modules: 'all' is not 'all-linear' or a list",
            "/finetune/training: unknown key 'learning_rat'; did you mean learning_rate?",
            "/prompt/labels: 3 labels for 4 answer options; give exactly 4",
            "/conditions/1: 'finetunned' is not allowed here; did you mean finetuned or finetuned_cot?",
        ]
    ]


def test_a_mistake_in_one_field_of_a_group_hides_none_in_another(tmp_path):
    def edit(raw):
        raw["eval"]["groups"][0]["languages"][1] = "syn_Relx"
        raw["eval"]["groups"][1]["role"] = "controls"
        raw["eval"]["groups"][1]["languages"][2] = "syn_ctlc"
        del raw["eval"]["groups"][1]["name"]

    path = spec_file(tmp_path, "smoke.json", edit)
    assert errors(path) == [
        f"{path}: {line}"
        for line in [
            "/eval/groups/0/languages/1: language 'syn_Relx' is not declared in /data/source/languages; "
            "did you mean syn_Rele, syn_Reld or syn_Relc?",
            "/eval/groups/1: 'name' is a required property",
            "/eval/groups/1/role: 'controls' is not allowed here; did you mean control?",
            "/eval/groups/1/languages/2: language 'syn_ctlc' is not declared in /data/source/languages; "
            "did you mean syn_Ctlc, syn_Ctle or syn_Ctld?",
        ]
    ]


def test_duplicate_key_names_the_line_of_the_second(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{\n  "name": "a",\n  "data": {},\n  "name": "b"\n}\n')
    assert errors(path) == [f"{path}:4:3: duplicate key 'name' (first given on line 2); keep one"]


def test_duplicate_key_in_a_nested_object(tmp_path):
    text = json.dumps(json.loads((REPO / "specs" / "smoke.json").read_text()), indent=2)
    text = text.replace('"learning_rate": 0.005,', '"learning_rate": 0.005,\n      "learning_rate": 0.3,')
    path = tmp_path / "spec.json"
    path.write_text(text)
    first = next(i for i, line in enumerate(text.splitlines(), 1) if '"learning_rate"' in line)
    assert errors(path) == [
        f"{path}:{first + 1}:7: duplicate key 'learning_rate' (first given on line {first}); keep one"
    ]


def test_same_key_in_sibling_objects_is_fine(tmp_path):
    path = spec_file(tmp_path, "smoke.json")  # "name" appears at several levels, "family" in siblings
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "text, where",
    [
        ("[" * 5000, f"1:{MAX_DEPTH + 1}"),
        ('{"notes": "[[[[", "x": ' + '{"a": ' * 3000 + "1" + "}" * 3001, f"1:{24 + 6 * (MAX_DEPTH - 1)}"),
    ],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, text, where):
    path = tmp_path / "deep.json"
    path.write_text(text)
    assert errors(path) == [f"{path}:{where}: invalid JSON: nested more than {MAX_DEPTH} levels deep"]


def test_data_source_mistake_names_the_field_of_its_kind(tmp_path):
    path = spec_file(tmp_path, "full.json", lambda r: r["data"]["source"].update(pth="/data"))
    assert errors(path) == [f"{path}: /data/source: unknown key 'pth'; did you mean path?"]
    path = spec_file(tmp_path, "full.json", lambda r: r["data"].update(source={"kind": "belebel"}))
    assert errors(path)[0] == f"{path}: /data/source/kind: unknown kind 'belebel'; did you mean belebele?"
    path = spec_file(tmp_path, "full.json", lambda r: r["data"].update(source={"path": "/data"}))
    assert (
        errors(path)[0]
        == f"{path}: /data/source: 'kind' is a required property (one of: synthetic, belebele, parallel)"
    )


def test_mistakes_inside_an_engine_name_the_fields_of_its_kind(tmp_path):
    engine = {"kind": "torchrun", "nproc_per_node": 0, "fsdpp": {}}
    path = spec_file(tmp_path, "smoke.json", lambda r: r["models"][0].update(engines={"finetune": engine}))
    assert errors(path) == [
        f"{path}: /models/0/engines/finetune: unknown key 'fsdpp'; did you mean fsdp?",
        f"{path}: /models/0/engines/finetune/nproc_per_node: 0 is less than the minimum of 1",
    ]


def test_engine_chosen_by_kind_is_explained_by_its_own_branch():
    """An engine kind with settings (as the vLLM engine adds): a mistake inside it names that
    field, whatever other kinds exist."""
    schema = copy.deepcopy(load_schema())
    schema["$defs"]["serverEvaluateEngine"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "properties": {
            "kind": {"const": "server"},
            "launch": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"tensor_parallel_size": {"type": "integer", "minimum": 1}},
            },
        },
    }
    schema["$defs"]["evaluateEngine"]["oneOf"].append({"$ref": "#/$defs/serverEvaluateEngine"})
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    engine = {"kind": "server", "launch": {"tensor_parallel_size": 0, "tensor_paralel": 2}}
    raw["models"][0]["engines"] = {"evaluate": engine}
    assert [p.line("spec.json") for p in schema_problems(raw, schema)] == [
        "spec.json: /models/0/engines/evaluate/launch: unknown key 'tensor_paralel'; did you mean tensor_parallel_size?",
        "spec.json: /models/0/engines/evaluate/launch/tensor_parallel_size: 0 is less than the minimum of 1",
    ]


def test_plan_prints_items_per_language_as_a_table():
    result = CliRunner().invoke(main, ["plan", str(REPO / "specs" / "smoke.json")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("evaluation items per language:")
    assert lines[start + 1].split() == ["group", "role", "language", "items"]
    rows = [line.split() for line in lines[start + 2 : start + 12]]
    assert rows == [
        [group, role, code, "60"]
        for group, role, codes in (
            ("Synthetic-A", "related", ("syn_Rela", "syn_Relb", "syn_Relc", "syn_Reld", "syn_Rele")),
            ("Synthetic-B", "control", ("syn_Ctla", "syn_Ctlb", "syn_Ctlc", "syn_Ctld", "syn_Ctle")),
        )
        for code in codes
    ]
