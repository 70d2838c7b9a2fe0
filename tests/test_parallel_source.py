"""The declared `parallel` source: the Belebele recipe gives exactly the Belebele loader's items,
prompts and study split on the real files; the SIB-200 recipe reads the real TSV files with its
own splits; CSV quoting, Parquet, list columns and letter answers; each data problem stops
validate and plan with exit 2 and one line naming the file and row; local data is keyed by its
items; the hub declarations of docs/datasets.md validate and plan offline."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.data.belebele import load_belebele
from relxfer.data.parallel import Columns, ParallelDeclaration, load_parallel
from relxfer.data.prompts import PromptBuilder
from relxfer.data.recipes import recipe
from relxfer.errors import DataError
from relxfer.plan.cells import plan
from relxfer.plan.sources import parallel_declaration
from relxfer.plan.study_data import load_study_data
from relxfer.spec.load import load_spec
from relxfer.spec.types import ParallelSource
from tests.support.spec_files import shipped, write_spec

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
BELEBELE_CODES = ["arb_Arab", "eng_Latn", "fra_Latn", "tur_Latn", "zho_Hans"]
TOPICS = "science/technology, travel, politics, sports, health, entertainment, geography"


def fail(args: list[str]) -> str:
    """Run the CLI; assert exit 2 and one line without a traceback; return the line."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0].removeprefix("Error: ")


# --- Belebele as a recipe ---------------------------------------------------------------------


def belebele_declaration(path: Path) -> ParallelDeclaration:
    declared = recipe("belebele")
    source = ParallelSource.from_partial({**declared, "path": str(path)})
    return parallel_declaration(source)


def test_belebele_recipe_gives_the_belebele_loaders_items_prompts_and_gold(belebele_dir):
    before = load_belebele(BELEBELE_CODES, path=belebele_dir).items_by_language
    after = load_parallel(belebele_declaration(belebele_dir), {"test": BELEBELE_CODES}, n_options=4).items["test"]
    assert list(after) == BELEBELE_CODES
    for code in BELEBELE_CODES:
        assert len(after[code]) == 900
        assert after[code] == before[code], code  # every field, in file order
    for preset, labels in (("relxfer-v1", ["1", "2", "3", "4"]), ("lm-eval-belebele", ["A", "B", "C", "D"])):
        builder = PromptBuilder.from_spec({"preset": preset, "labels": labels})
        for code in BELEBELE_CODES:
            for old, new in zip(before[code], after[code]):
                assert builder.training_example(new) == builder.training_example(old)


def test_a_belebele_study_gets_the_same_split_items_and_digests_from_the_recipe(belebele_dir, tmp_path):
    raw = shipped("belebele-local.json")
    raw["data"]["source"]["path"] = str(belebele_dir)
    declared = copy.deepcopy(raw)
    declared["data"]["source"] = {"kind": "parallel", "recipe": "belebele", "path": str(belebele_dir)}
    old = load_study_data(load_spec(write_spec(tmp_path, raw, "old.json")))
    new = load_study_data(load_spec(write_spec(tmp_path, declared, "new.json")))
    assert new.held_out_ids == old.held_out_ids and len(new.held_out_ids) == 100
    assert new.train_items == old.train_items and new.eval_items == old.eval_items
    assert (new.digest, new.train_digest, new.eval_digests) == (old.digest, old.train_digest, old.eval_digests)


# --- SIB-200 ----------------------------------------------------------------------------------


def sib_raw(data_dir: Path) -> dict:
    raw = shipped("sib200-gemma.json")
    raw["data"]["source"]["path"] = str(data_dir)
    return raw


def test_sib200_recipe_reads_the_real_files_with_their_own_splits(sib200_dir, tmp_path):
    spec = load_spec(write_spec(tmp_path, sib_raw(sib200_dir)))
    data = load_study_data(spec)
    assert len(data.train_items) == 701 and {i.language for i in data.train_items} == {"arb_Arab"}
    assert {code: len(items) for code, items in data.eval_items.items()} == dict.fromkeys(spec.eval_languages, 204)
    assert len(data.held_out_ids) == 204
    assert not {i.question_id for i in data.train_items} & set(data.held_out_ids)
    heb = data.eval_items["heb_Hebr"][0]
    assert (heb.question_id, heb.question, heb.options[heb.gold]) == ("1523", "", "science/technology")
    assert [i.question_id for i in data.eval_items["tir_Ethi"]] == [i.question_id for i in data.eval_items["heb_Hebr"]]
    # Every topic of every row is one of the seven options, so the labels 1-7 cover them.
    assert {i.gold for items in data.eval_items.values() for i in items} == set(range(7))


def test_max_items_of_an_own_split_is_a_seeded_draw_of_every_topic(sib200_dir, tmp_path):
    """SIB-200's test split is sorted by topic: its first rows are all science/technology, so
    `evaluation.max_items` draws ids by `data.split.seed` (the same in every language)."""
    raw = sib_raw(sib200_dir)
    raw["evaluation"] = {"max_items": 24}
    data = load_study_data(load_spec(write_spec(tmp_path, raw)))
    ids = {code: [i.question_id for i in items] for code, items in data.eval_items.items()}
    assert all(len(v) == 24 and v == ids["heb_Hebr"] for v in ids.values())
    assert len({i.gold for i in data.eval_items["heb_Hebr"]}) == 7
    raw["data"]["split"] = {"seed": 1}
    other = load_study_data(load_spec(write_spec(tmp_path, raw, "seed1.json")))
    assert [i.question_id for i in other.eval_items["heb_Hebr"]] != ids["heb_Hebr"]


def test_topic_preset_renders_the_text_and_the_numbered_topics(sib200_dir, tmp_path):
    spec = load_spec(write_spec(tmp_path, sib_raw(sib200_dir)))
    item = load_study_data(spec).eval_items["heb_Hebr"][0]
    builder = PromptBuilder.from_spec(spec.prompt.to_dict())
    options = "\n".join(f"{n}. {t}" for n, t in enumerate(TOPICS.split(", "), start=1))
    assert builder.direct(item) == (
        "Classify the text: answer with the number of the topic it is about.\n\n"
        f"Text: {item.passage}\n{options}\nAnswer:"
    )
    assert builder.continuations() == [f" {n}" for n in range(1, 8)]
    assert builder.template_id.startswith("topic-v1@1#")


def small_sib(tmp_path: Path, sib200_dir: Path, rows: int = 12) -> Path:
    """A copy of the first rows of three languages' train and test files, to edit."""
    root = tmp_path / "sib"
    for code in ("arb_Arab", "heb_Hebr", "eng_Latn"):
        (root / code).mkdir(parents=True)
        for split in ("train", "test"):
            with (sib200_dir / code / f"{split}.tsv").open(encoding="utf-8", newline="") as handle:
                table = list(csv.reader(handle, delimiter="\t"))[: rows + 1]
            write_tsv(root / code / f"{split}.tsv", table)
    return root


def write_tsv(path: Path, table: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(table)


def edit_tsv(path: Path, edit) -> None:
    with path.open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle, delimiter="\t"))
    edit(table)
    write_tsv(path, table)


def small_spec(tmp_path: Path, data_dir: Path) -> Path:
    raw = sib_raw(data_dir)
    raw["eval"]["groups"] = [
        {"name": "Semitic", "role": "related", "languages": ["heb_Hebr"]},
        {"name": "controls", "role": "control", "family": "Indo-European", "languages": ["eng_Latn"]},
    ]
    return write_spec(tmp_path, raw)


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_missing_column_names_file_and_row(command, sib200_dir, tmp_path):
    root = small_sib(tmp_path, sib200_dir)
    edit_tsv(root / "heb_Hebr" / "test.tsv", lambda t: t[0].__setitem__(1, "topic"))
    file = root / "heb_Hebr" / "test.tsv"
    assert fail([command, str(small_spec(tmp_path, root))]) == (
        f"{file}:2: no column 'category'; the row has 'index_id', 'topic', 'text'"
    )


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_an_answer_outside_the_options_names_file_and_row(command, sib200_dir, tmp_path):
    root = small_sib(tmp_path, sib200_dir)
    edit_tsv(root / "heb_Hebr" / "test.tsv", lambda t: t[2].__setitem__(1, "weather"))
    file = root / "heb_Hebr" / "test.tsv"
    assert fail([command, str(small_spec(tmp_path, root))]) == (
        f"{file}:3: answer \"weather\" in column 'category' is not one of the options: {TOPICS}"
    )


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_ids_not_parallel_across_languages_name_file_and_row(command, sib200_dir, tmp_path):
    root = small_sib(tmp_path, sib200_dir)
    edit_tsv(root / "eng_Latn" / "test.tsv", lambda t: t[3].__setitem__(0, "99999"))
    file = root / "eng_Latn" / "test.tsv"
    assert fail([command, str(small_spec(tmp_path, root))]) == (
        f"{file}:4: id '99999' of eng_Latn is not in heb_Hebr: ids are not parallel across languages"
    )


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_an_absent_language_file_is_named(command, sib200_dir, tmp_path):
    root = small_sib(tmp_path, sib200_dir)
    (root / "eng_Latn" / "test.tsv").unlink()
    file = root / "eng_Latn" / "test.tsv"
    assert fail([command, str(small_spec(tmp_path, root))]) == (
        f"{file}: no such file for language 'eng_Latn' (data.source.files '{{language}}/{{split}}.tsv')"
    )


def test_labels_must_number_the_declared_options(sib200_dir, tmp_path):
    raw = sib_raw(sib200_dir)
    raw["prompt"]["labels"] = ["1", "2", "3", "4"]
    spec = write_spec(tmp_path, raw)
    assert fail(["validate", str(spec)]) == f"{spec}: /prompt/labels: 4 labels for 7 answer options; give exactly 7"


def test_a_local_parallel_source_is_keyed_by_its_items_not_its_path(sib200_dir, tmp_path):
    first = small_sib(tmp_path / "a", sib200_dir)
    second = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, second)
    keys = [
        [c.key for c in plan(load_spec(small_spec(tmp_path / d, root)))] for d, root in (("a", first), ("b", second))
    ]
    assert keys[0] == keys[1]
    edit_tsv(second / "eng_Latn" / "test.tsv", lambda t: t[1].__setitem__(2, t[1][2] + " (edited)"))
    edited = [c.key for c in plan(load_spec(small_spec(tmp_path / "b", second)))]
    finetune_key = keys[0][0]  # the training files are unchanged, but the data identity is all of them
    assert edited[0] != finetune_key and set(edited).isdisjoint(keys[0])


# --- file formats -----------------------------------------------------------------------------


def test_csv_quoting_parquet_list_columns_and_letter_answers(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = [
        {"qid": 1, "text": 'a "quoted", tabbed\there\nand two lines', "opts": ["x", "y", "z"], "gold": "B"},
        {"qid": 2, "text": "plain", "opts": ["p", "q", "r"], "gold": "C"},
    ]
    (tmp_path / "eng_Latn.csv").write_text(
        "qid,text,opts,gold\n"
        + "".join(
            f'{r["qid"]},"{r["text"].replace(chr(34), chr(34) * 2)}","{json.dumps(r["opts"]).replace(chr(34), chr(34) * 2)}",{r["gold"]}\n'
            for r in rows
        ),
        encoding="utf-8",
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "fra_Latn.parquet")
    columns = Columns(answer="gold", id=("qid",), passage="text", options="opts")
    items = {}
    for code, pattern in (("eng_Latn", "{language}.csv"), ("fra_Latn", "{language}.parquet")):
        declaration = ParallelDeclaration(columns=columns, answer_format="letter", path=str(tmp_path), files=pattern)
        items[code] = load_parallel(declaration, {"test": [code]}, n_options=3).items["test"][code]
    for code in items:
        assert [(i.question_id, i.passage, i.options, i.gold) for i in items[code]] == [
            ("1", rows[0]["text"], ("x", "y", "z"), 1),
            ("2", "plain", ("p", "q", "r"), 2),
        ], code
    declaration = ParallelDeclaration(
        columns=columns, answer_format="letter", path=str(tmp_path), files="{language}.csv"
    )
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'eng_Latn.csv'}:2: 3 options, but the prompt has 4 labels")
    ):
        load_parallel(declaration, {"test": ["eng_Latn"]}, n_options=4)


# --- hub declarations (docs/datasets.md) ------------------------------------------------------

DECLARATIONS = re.findall(
    r"<!-- declaration: ([\w-]+) -->\n```json\n(.*?)\n```", (REPO / "docs" / "datasets.md").read_text(), re.S
)


def test_the_docs_declare_xnli_xcopa_and_global_mmlu():
    assert [name for name, _ in DECLARATIONS] == ["xnli", "xcopa", "global-mmlu"]


@pytest.mark.parametrize("name,block", DECLARATIONS, ids=[name for name, _ in DECLARATIONS])
def test_a_hub_declaration_validates_and_plans_offline(name, block, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = shipped("belebele-local.json") | json.loads(block)
    raw["name"] = name
    spec = write_spec(tmp_path, raw)
    result = CliRunner().invoke(main, ["validate", str(spec)])
    assert result.exit_code == 0 and "valid" in result.output, result.output
    result = CliRunner().invoke(main, ["plan", str(spec), "--simulations", "20"])
    assert result.exit_code == 0, result.output
    hub_id = raw["data"]["source"]["hub_id"]
    assert f"data: {hub_id} not contacted" in result.output
    n_eval = raw["data"]["split"]["held_out"]
    language = raw["eval"]["groups"][0]["languages"][0]
    assert re.search(rf"{language}\s+{n_eval}\n", result.output), result.output
