"""Plan: cell counts and keys that change exactly when a result-affecting setting changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from relxfer.errors import ModelError
from relxfer.models import packaged_gemma, real_tokenizers, tiny, twins
from relxfer.models.builtin_recipes import builtin_recipe_hash
from relxfer.plan.cells import count_by_kind, plan
from relxfer.spec.builtins import BUILTIN_MODEL_IDS
from relxfer.spec.load import load_spec
from tests.support.shared_data import tokenizers_dir

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def load_variant(tmp_path: Path, name: str, edit=None):
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    if edit:
        edit(raw)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return load_spec(path)


def keys(spec) -> dict[str, str]:
    return {cell.run_name: cell.key for cell in plan(spec)}


def test_smoke_plan_counts(tmp_path):
    cells = plan(load_variant(tmp_path, "a"))
    assert count_by_kind(cells) == {"finetune": 1, "evaluate": 3 * 10}
    assert len({c.key for c in cells}) == len(cells)
    finetuned = [c for c in cells if c.condition == "finetuned"]
    assert all(c.finetune_key == cells[0].key and c.seed == 0 for c in finetuned)
    assert all(c.seed is None for c in cells if c.condition in ("baseline", "cot"))


def test_keys_are_stable_across_loads(tmp_path):
    assert keys(load_variant(tmp_path, "a")) == keys(load_variant(tmp_path, "b"))


def test_learning_rate_changes_only_finetune_dependent_keys(tmp_path):
    before = keys(load_variant(tmp_path, "a"))
    after = keys(load_variant(tmp_path, "b", lambda r: r["finetune"]["training"].update(learning_rate=0.01)))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {name for name in before if name.startswith("finetune/") or "/finetuned/" in name}


def test_cot_settings_change_only_cot_keys(tmp_path):
    before = keys(load_variant(tmp_path, "a"))
    after = keys(load_variant(tmp_path, "b", lambda r: r["cot"].update(max_new_tokens=99)))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {name for name in before if "/cot/" in name}


def test_seeds_multiply_finetunes_and_finetuned_evaluations_only(tmp_path):
    spec = load_variant(tmp_path, "a", lambda r: r.update(seeds=[0, 1, 2]))
    counts = count_by_kind(plan(spec))
    assert counts == {"finetune": 3, "evaluate": 10 * (1 + 3 + 1)}


def test_prose_does_not_change_keys(tmp_path):
    before = keys(load_variant(tmp_path, "a"))
    after = keys(load_variant(tmp_path, "b", lambda r: r.update(description="reworded", notes="new")))
    assert before == after


def test_plan_of_the_full_study_without_the_network(monkeypatch):
    """`relxfer plan specs/full.json`: 7 fine-tunes, 7 x 6 x 3 evaluations, 4,800 training items,
    no held-out id in training, and not one network connection."""
    import socket

    from click.testing import CliRunner

    from relxfer.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("plan tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = CliRunner().invoke(main, ["plan", str(REPO / "specs" / "full.json")])
    assert result.exit_code == 0, result.output
    assert "cells: 7 finetune, 126 evaluate, 133 total" in result.output
    assert "4800 training items from acm_Arab, apc_Arab, arb_Arab, ars_Arab, ary_Arab, arz_Arab" in result.output
    assert "100 held-out ids; 0 held-out ids in training" in result.output


def test_engines_and_resources_default_to_local_and_leave_keys_alone(tmp_path):
    """A model without `engines` runs on the local engines; writing them out (or declaring
    resources, which are scheduling only) changes no cell key."""
    plain = load_variant(tmp_path, "plain")
    assert plain.models[0].engines.to_dict() == {"evaluate": {"kind": "local"}, "finetune": {"kind": "local"}}
    assert plain.models[0].resources.to_dict() == {"gpus": 0, "cpus": 1, "memory_gb": None, "gpu_memory_gb": None}

    def explicit(raw):
        raw["models"][0]["engines"] = {"evaluate": {"kind": "local"}, "finetune": {"kind": "local"}}
        raw["models"][0]["resources"] = {"gpus": 2, "cpus": 8, "memory_gb": 64}

    assert keys(load_variant(tmp_path, "explicit", explicit)) == keys(plain)


def test_cell_keys_of_every_shipped_spec_are_pinned(monkeypatch, belebele_dir, sib200_dir):
    """A cell's key decides what a re-run skips: the keys of every spec in specs/ stay what
    tests/plan_keys.json records (a change there re-runs finished studies). Belebele and SIB-200
    keys hold a digest of the files, and a twin's keys the digests of its tokenizer files, so they
    are pinned for the shared copy of the data."""
    monkeypatch.setenv("BELEBELE_DIR", str(belebele_dir))
    monkeypatch.setenv("SIB200_DIR", str(sib200_dir))
    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(tokenizers_dir()))
    pinned = json.loads((REPO / "tests" / "plan_keys.json").read_text())
    shipped = sorted(p.name for p in (REPO / "specs").glob("*.json"))
    assert sorted(pinned) == shipped
    for name in shipped:
        assert keys(load_spec(REPO / "specs" / name)) == pinned[name], name


def test_the_one_gpu_study_is_the_full_studys_4b_model_cell_for_cell():
    """specs/one-gpu.json runs the 4B model of specs/full.json in the same format and design: its
    cells are that model's cells of the full study, key for key, so either run's results serve
    the other."""
    full = {c.run_name: c.key for c in plan(load_spec(REPO / "specs" / "full.json")) if "/qwen3-4b/" in c.run_name}
    one_gpu = keys(load_spec(REPO / "specs" / "one-gpu.json"))
    assert one_gpu == full and len(one_gpu) == 19


def test_a_built_in_model_is_keyed_by_the_recipe_that_names_its_cache_directory(tmp_path, monkeypatch):
    """The hash in a built-in model's cell keys is the one its built files are stored under: a
    recipe that builds other files gives other keys."""
    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(tokenizers_dir()))
    directories = {
        tiny.BUILTIN_ID: tiny.tiny_model_dir(tmp_path),
        packaged_gemma.BUILTIN_ID: packaged_gemma.gemma_model_dir(tmp_path),
        **{item.builtin_id: twins.twin_dir(tmp_path, item) for item in twins.TWINS},
    }
    assert sorted(directories) == sorted(BUILTIN_MODEL_IDS)
    for source, directory in directories.items():
        assert directory.name.endswith("-" + builtin_recipe_hash(source)), source
    with pytest.raises(ModelError, match="unknown built-in model 'builtin:nope'"):
        builtin_recipe_hash("builtin:nope")

    before = keys(load_variant(tmp_path, "a"))
    monkeypatch.setattr(tiny, "BUILD_VERSION", tiny.BUILD_VERSION + 1)
    after = keys(load_variant(tmp_path, "b"))
    assert all(after[name] != before[name] for name in before)


def test_a_twin_is_keyed_by_its_tokenizer_files_not_their_location(tmp_path, monkeypatch):
    """A twin is built from the real tokenizer and chat template: the same files elsewhere give
    the same keys, an edited chat template new keys for that twin's cells only."""
    spec_path = REPO / "specs" / "families.json"
    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(tokenizers_dir()))
    original = keys(load_spec(spec_path))

    copy = tmp_path / "tokenizers"
    shutil.copytree(tokenizers_dir(), copy)
    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(copy))
    assert keys(load_spec(spec_path)) == original

    template = copy / "gpt-oss" / "chat_template.jinja"
    template.write_text(template.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    edited = keys(load_spec(spec_path))
    gpt_oss = {name for name in original if name.split("/")[1] == "gpt-oss"}
    assert gpt_oss and {name for name in original if edited[name] != original[name]} == gpt_oss


def test_a_local_data_directory_is_keyed_by_its_items_not_its_location(tmp_path, monkeypatch, belebele_dir):
    """The same files in another clone give the same keys; one edited answer gives new ones."""
    spec_path = REPO / "specs" / "belebele-local.json"
    monkeypatch.setenv("BELEBELE_DIR", str(belebele_dir))
    original = keys(load_spec(spec_path))

    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in ("eng_Latn", "fra_Latn", "tur_Latn", "zho_Hans", "arb_Arab"):
        (copy / f"{name}.jsonl").write_bytes((belebele_dir / f"{name}.jsonl").read_bytes())
    monkeypatch.setenv("BELEBELE_DIR", str(copy))
    assert keys(load_spec(spec_path)) == original

    rows = (copy / "fra_Latn.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(rows[0])
    first["correct_answer_num"] = "1" if first["correct_answer_num"] != "1" else "2"
    (copy / "fra_Latn.jsonl").write_text("\n".join([json.dumps(first, ensure_ascii=False), *rows[1:]]) + "\n")
    edited = keys(load_spec(spec_path))
    assert all(edited[name] != original[name] for name in original)


def test_a_models_prompt_format_changes_its_keys_and_true_means_the_defaults(tmp_path):
    before = keys(load_variant(tmp_path, "a"))
    on = keys(load_variant(tmp_path, "b", lambda r: r["prompt"].update(chat_template=True)))
    assert all(on[name] != before[name] for name in before)
    spelled_out = {"template_args": {}, "system_prompt": None, "answer_prefix": "", "date": "2025-01-01"}
    assert keys(load_variant(tmp_path, "c", lambda r: r["prompt"].update(chat_template=spelled_out))) == on
    # A model's own format replaces the spec's for that model.
    own = keys(load_variant(tmp_path, "d", lambda r: r["models"][0].update(chat_template=False)))
    assert own == before
    thinking_off = {"template_args": {"enable_thinking": False}}
    other = keys(load_variant(tmp_path, "e", lambda r: r["models"][0].update(chat_template=thinking_off)))
    assert all(other[name] not in (before[name], on[name]) for name in before)
    for edit in (lambda m: {"date": "2026-12-07"}, lambda m: {"system_prompt": "Be brief."}):
        changed = keys(load_variant(tmp_path, "f", lambda r, e=edit: r["models"][0].update(chat_template=e(r))))
        assert all(changed[name] != on[name] for name in on)


def test_a_bad_prompt_format_is_a_schema_problem(tmp_path):
    from relxfer.errors import SpecError

    with pytest.raises(SpecError, match=r"chat_template.*date"):
        load_variant(tmp_path, "a", lambda r: r["prompt"].update(chat_template={"date": "today"}))
    with pytest.raises(SpecError, match=r"unknown key 'enable_thinking'"):
        load_variant(tmp_path, "b", lambda r: r["prompt"].update(chat_template={"enable_thinking": False}))


def test_a_local_models_chat_template_enters_its_keys(tmp_path):
    """A local model directory's template text is in the keys of its chat-template cells (as a
    hub model's revision is): an edited template re-runs them; raw-completion cells keep theirs."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")

    def variant(name: str, chat) -> dict[str, str]:
        return keys(
            load_variant(tmp_path, name, lambda r: r["models"][0].update(source=str(model), chat_template=chat))
        )

    raw_before, chat_before = variant("a", False), variant("b", True)
    (model / "chat_template.jinja").write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    assert variant("c", False) == raw_before
    after = variant("d", True)
    assert all(after[name] != chat_before[name] for name in after)
