"""Belebele loader: real data from ../shared/data/belebele (read-only, never copied into the
repository), corrupt and missing variants built in tmp_path, the hub path offline."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import pytest

from relxfer.data.belebele import load_belebele
from relxfer.errors import DataError, SpecError
from tests.support import shared_data

pytestmark = pytest.mark.unit

DATA_DIR = shared_data.BELEBELE
LANGUAGES = ["arb_Arab", "eng_Latn", "fra_Latn", "tur_Latn", "zho_Hans"]
LOCAL_HINT = "a local directory of <code>.jsonl files or the Belebele release zip"

needs_data = pytest.mark.usefixtures("belebele_dir")  # skipped without the real data (or failed: shared_data)


@pytest.fixture
def tmp_path(tmp_path):
    """pytest's tmp_path, resolved: the loader reports resolved paths (e.g. /private/tmp on macOS)."""
    return tmp_path.resolve()


@pytest.fixture(scope="module")
def real(belebele_dir):
    return load_belebele(LANGUAGES, path=DATA_DIR)


def _lines(code: str, n: int) -> list[str]:
    """The first n lines of a real file, to build variants in tmp_path."""
    with (DATA_DIR / f"{code}.jsonl").open(encoding="utf-8") as file:
        return [next(file) for _ in range(n)]


def _write(directory: Path, code: str, lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{code}.jsonl"
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


_DROP = object()  # _row(field=_DROP) leaves the field out


def _row(**overrides) -> str:
    """One JSON line of the hub schema, with some fields changed."""
    row = {
        "link": "https://example.org/p",
        "question_number": 1,
        "flores_passage": "P.",
        "question": "Q?",
        "mc_answer1": "a",
        "mc_answer2": "b",
        "mc_answer3": "c",
        "mc_answer4": "d",
        "correct_answer_num": "2",
        "dialect": "eng_Latn",
        "ds": None,
    }
    row.update(overrides)
    return json.dumps({k: v for k, v in row.items() if v is not _DROP})


# --- Real data --------------------------------------------------------------------------------


@needs_data
def test_each_language_has_900_items(real):
    assert real.languages == LANGUAGES
    assert {code: len(items) for code, items in real.items_by_language.items()} == dict.fromkeys(LANGUAGES, 900)
    assert real.n_items == 4500


@needs_data
def test_question_ids_and_answers_are_parallel_across_languages(real):
    reference = [(item.question_id, item.passage_id, item.gold) for item in real.items_by_language["eng_Latn"]]
    for code in LANGUAGES:
        assert [(item.question_id, item.passage_id, item.gold) for item in real.items_by_language[code]] == reference
    assert len({qid for qid, _, _ in reference}) == 900
    assert len({passage for _, passage, _ in reference}) == 488


@needs_data
def test_items_follow_the_hub_schema(real):
    first = real.items_by_language["eng_Latn"][0]
    assert first.question_id == "https://en.wikibooks.org/wiki/Accordion/Right_hand#1"
    assert first.passage_id == "https://en.wikibooks.org/wiki/Accordion/Right_hand"
    assert first.language == "eng_Latn"
    assert first.options[0] == "For additional volume, increase the force with which you hit the keys"
    assert len(first.options) == 4 and first.gold == 0  # correct_answer_num "1"
    golds = [item.gold for item in real.items_by_language["eng_Latn"]]
    assert {g: golds.count(g) for g in range(4)} == {0: 206, 1: 251, 2: 246, 3: 197}  # per SOURCE.md


@needs_data
def test_source_and_digest_are_stable(real):
    assert real.source == DATA_DIR.resolve().as_uri()
    # Pinned: the same files give the same digest on every machine (canonical item order).
    assert real.digest == "506f009b60d70e64"
    assert real.language_digests["arb_Arab"] == "5ca8a275e56e3311"
    reordered = load_belebele(list(reversed(LANGUAGES)), path=str(DATA_DIR))
    assert reordered.digest == real.digest
    assert load_belebele(["eng_Latn"], path=DATA_DIR).digest != real.digest


@needs_data
@pytest.mark.parametrize("folder", ["Belebele/", ""])
def test_zip_loads_the_same_items_as_the_directory(real, tmp_path, folder):
    archive = tmp_path / "Belebele.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for code in ["arb_Arab", "eng_Latn"]:
            zf.write(DATA_DIR / f"{code}.jsonl", f"{folder}{code}.jsonl")
        zf.writestr("__MACOSX/Belebele/._eng_Latn.jsonl", "not json")  # ignored metadata
    from_zip = load_belebele(["arb_Arab", "eng_Latn"], path=archive)
    assert from_zip.items_by_language == {c: real.items_by_language[c] for c in ["arb_Arab", "eng_Latn"]}
    assert from_zip.language_digests == {c: real.language_digests[c] for c in ["arb_Arab", "eng_Latn"]}
    assert from_zip.source == archive.as_uri()
    assert not (tmp_path / "Belebele").exists()  # read in place, nothing extracted


@needs_data
def test_missing_language_file_names_the_file_and_the_available_languages():
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn", "heb_Hebr"], path=DATA_DIR)
    assert str(error.value) == (
        f"{DATA_DIR.resolve()}/heb_Hebr.jsonl not found; languages available in {DATA_DIR.resolve()}: "
        "arb_Arab, eng_Latn, fra_Latn, tur_Latn, zho_Hans"
    )


# --- Built variants ---------------------------------------------------------------------------


def test_missing_member_of_zip_lists_the_available_languages(tmp_path):
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Belebele/eng_Latn.jsonl", _row() + "\n")
        zf.writestr("Belebele/nested/deeper/fra_Latn.jsonl", _row() + "\n")  # too deep: not a member
    with pytest.raises(DataError) as error:
        load_belebele(["fra_Latn"], path=archive)
    assert str(error.value) == f"{archive} has no member fra_Latn.jsonl; languages available in {archive}: eng_Latn"


def test_damaged_zip_member_is_a_data_error(tmp_path):
    archive = tmp_path / "Belebele.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("eng_Latn.jsonl", _row() + "\n")
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b'"link"')] ^= 0xFF  # flip a byte of the stored member: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"^cannot read .*/Belebele\.zip/eng_Latn\.jsonl: Bad CRC-32"):
        load_belebele(["eng_Latn"], path=archive)


def test_missing_directory_says_how_to_fix_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path / "nowhere")
    assert str(error.value) == (
        f"Belebele data path {tmp_path / 'nowhere'} does not exist: point the data source at {LOCAL_HINT}, "
        "or leave the path unset to load facebook/belebele from the Hugging Face hub"
    )


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt is neither a directory nor a zip file"):
        load_belebele(["eng_Latn"], path=tmp_path / "notes.txt")


def test_empty_directory_says_no_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{tmp_path}/eng_Latn.jsonl not found; no <code>.jsonl files in {tmp_path}"


def test_corrupt_json_line_reports_file_and_line(tmp_path):
    file = _write(tmp_path, "eng_Latn", [_row(), '{"link": ', _row(question_number=2)])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:2: invalid JSON: Expecting value (column 10)"


def test_corrupt_line_inside_a_zip_reports_member_and_line(tmp_path):
    archive = tmp_path / "Belebele.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Belebele/eng_Latn.jsonl", _row() + "\n\n" + "[1, 2\n")
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=archive)
    assert str(error.value) == f"{archive}/Belebele/eng_Latn.jsonl:3: invalid JSON: Expecting ',' delimiter (column 6)"


@needs_data
def test_real_lines_with_one_field_removed_report_the_field(tmp_path):
    lines = _lines("eng_Latn", 3)
    broken = json.loads(lines[2])
    del broken["question"], broken["mc_answer3"]
    file = _write(tmp_path, "eng_Latn", lines[:2] + [json.dumps(broken)])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:3: missing fields 'question', 'mc_answer3'"


def test_missing_single_field(tmp_path):
    file = _write(tmp_path, "eng_Latn", [_row(correct_answer_num=_DROP)])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:1: missing field 'correct_answer_num'"


@pytest.mark.parametrize("bad", ["5", "0", "A", 2.0, None])
def test_bad_correct_answer_num(tmp_path, bad):
    file = _write(tmp_path, "eng_Latn", [_row(), _row(question_number=2, correct_answer_num=bad)])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == (
        f'{file}:2: correct_answer_num must be one of "1", "2", "3", "4", got {json.dumps(bad)}'
    )


def test_integer_answer_and_question_numbers_are_accepted(tmp_path):
    _write(tmp_path, "eng_Latn", [_row(correct_answer_num=4, question_number="2")])
    (item,) = load_belebele(["eng_Latn"], path=tmp_path).items_by_language["eng_Latn"]
    assert (item.question_id, item.gold) == ("https://example.org/p#2", 3)


def test_non_string_text_field(tmp_path):
    file = _write(tmp_path, "eng_Latn", [_row(mc_answer2=7)])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:1: field 'mc_answer2' must be a string, got 7"


def test_duplicate_question_and_empty_file(tmp_path):
    file = _write(tmp_path, "eng_Latn", [_row(), _row(question_number=2), _row()])
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:3: duplicate question 'https://example.org/p#1' (first at {file}:1)"

    empty = _write(tmp_path, "fra_Latn", [""])
    with pytest.raises(DataError) as error:
        load_belebele(["fra_Latn"], path=tmp_path)
    assert str(error.value) == f"{empty}: no items"


def test_invalid_utf8(tmp_path):
    file = tmp_path / "eng_Latn.jsonl"
    file.write_bytes(_row().encode() + b"\n" + b'{"link": "\xff"}\n')
    with pytest.raises(DataError) as error:
        load_belebele(["eng_Latn"], path=tmp_path)
    assert str(error.value) == f"{file}:2: not valid UTF-8 (byte 10)"


def test_argument_errors(tmp_path):
    with pytest.raises(SpecError, match="^no Belebele languages requested$"):
        load_belebele([], path=tmp_path)
    with pytest.raises(SpecError, match="^a dataset revision applies to the hub only; drop `revision` or `path`$"):
        load_belebele(["eng_Latn"], path=tmp_path, revision="abc")
    _write(tmp_path, "eng_Latn", [_row()])
    assert load_belebele("eng_Latn", path=tmp_path).languages == ["eng_Latn"]  # a lone code is one language


# --- Hugging Face hub -------------------------------------------------------------------------


def _fake_datasets(monkeypatch, calls: list, rows=None, error=None):
    """Stand-in for the `datasets` module: records load_dataset calls, returns rows or raises."""

    def load_dataset(path, name, split, revision):
        calls.append((path, name, split, revision))
        if error:
            raise error
        return [json.loads(_row(dialect=name, question_number=n)) for n in (1, 2)] if rows is None else rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_loads_one_config_per_language_at_the_pinned_revision(monkeypatch):
    calls: list = []
    _fake_datasets(monkeypatch, calls)
    data = load_belebele(["heb_Hebr", "amh_Ethi"], revision="0123abc")
    assert calls == [
        ("facebook/belebele", "heb_Hebr", "test", "0123abc"),
        ("facebook/belebele", "amh_Ethi", "test", "0123abc"),
    ]
    assert data.source == "hf://datasets/facebook/belebele@0123abc"
    assert [item.question_id for item in data.items_by_language["amh_Ethi"]] == [
        "https://example.org/p#1",
        "https://example.org/p#2",
    ]
    assert load_belebele(["heb_Hebr"], hub_id="me/belebele-copy").source == "hf://datasets/me/belebele-copy"


def test_hub_rows_are_checked_like_file_lines(monkeypatch):
    _fake_datasets(monkeypatch, [], rows=[json.loads(_row(correct_answer_num="9"))])
    with pytest.raises(DataError) as error:
        load_belebele(["heb_Hebr"])
    assert str(error.value) == (
        'facebook/belebele[heb_Hebr] row 1: correct_answer_num must be one of "1", "2", "3", "4", got "9"'
    )


def test_hub_rejects_unknown_codes_before_any_download(monkeypatch):
    calls: list = []
    _fake_datasets(monkeypatch, calls)
    with pytest.raises(SpecError) as error:
        load_belebele(["eng_Latn", "hbe_Hebr"])
    assert str(error.value) == "unknown language code 'hbe_Hebr'; did you mean heb_Hebr?"
    assert calls == []


def test_hub_failure_is_one_line_with_a_fix(monkeypatch):
    _fake_datasets(monkeypatch, [], error=ConnectionError("Couldn't reach 'facebook/belebele' on the Hub\nmore detail"))
    with pytest.raises(DataError) as error:
        load_belebele(["heb_Hebr"], revision="v1")
    assert str(error.value) == (
        "could not load facebook/belebele config 'heb_Hebr' at revision 'v1' from the Hugging Face hub "
        "(ConnectionError: Couldn't reach 'facebook/belebele' on the Hub); check the network and "
        f"HF_HUB_OFFLINE, or point the data source at {LOCAL_HINT}"
    )
