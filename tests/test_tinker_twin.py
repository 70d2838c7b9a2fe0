"""The Tinker engine renders a model family's own format as the local engine does: the Qwen3
twin (the real Qwen3 tokenizer and chat template, thinking off) served by a real SkyRL tx server
(tinker SDK 0.16.1), on real SIB-200 sentences in Hebrew and French.

The same spec runs twice, on the Tinker engine and on the local engine: both runs record the same
template id, every label log-probability agrees within 1e-4 (the labels " 1".." 7" are scored
after the family's answer header), and chain-of-thought texts, split and truncated at the
family's markers on token ids, are identical, as are the truncation and parse-failure rates.
SIB-200's short sentences keep the service's full-vocabulary logits small (151,936 entries a
position): Belebele passages put a request in SkyRL's 3,072-token bucket, past this machine's
memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers.skyrl_env import skyrl_python
from tests.servers.skyrl_server import SkyRLServer, served_model
from tests.support.shared_data import tokenizers_dir

pytestmark = pytest.mark.system

pytest.importorskip("tinker", reason='the `test` extra: pip install -e ".[test]"')
TOLERANCE = 1e-4
LANGUAGES = ("heb_Hebr", "fra_Latn")


@pytest.fixture(scope="module")
def twin_server(tmp_path_factory, relxfer_cache):
    from relxfer.models import real_tokenizers
    from relxfer.models.twins import build_twin

    with pytest.MonkeyPatch.context() as env:
        env.setenv(real_tokenizers.TOKENIZERS_ENV, str(tokenizers_dir()))
        twin = build_twin(relxfer_cache, "builtin:qwen3-twin")
    root = tmp_path_factory.mktemp("skyrl-twin")
    served = served_model(twin, root / "qwen3-twin", "float32")
    # Four sequences a sampling batch: each holds a 151,936-wide logits row per position.
    server = SkyRLServer(skyrl_python(), served, root / "server", free_port(), sample_max_num_sequences=4)
    yield server.start()
    server.stop()


def twin_spec(path: Path, sib200_dir: Path, engine: dict) -> Path:
    spec = {
        "name": f"qwen3-twin-{engine['kind']}",
        "data": {"source": {"kind": "parallel", "recipe": "sib200", "path": str(sib200_dir)}},
        "train": {"languages": ["arb_Arab"]},
        "eval": {
            "groups": [
                {"name": "Semitic", "role": "related", "languages": [LANGUAGES[0]]},
                {"name": "control", "role": "control", "languages": [LANGUAGES[1]]},
            ]
        },
        "evaluation": {"max_items": 4},
        "prompt": {
            "preset": "topic-v1",
            "labels": ["1", "2", "3", "4", "5", "6", "7"],
            # Qwen3's own format, thinking off; a short reasoning budget keeps generation small.
            "chat_template": {"reasoning_budget": 16},
        },
        "models": [
            {"name": "qwen3", "source": "builtin:qwen3-twin", "dtype": "float32", "engines": {"evaluate": engine}}
        ],
        "conditions": ["baseline", "cot"],
        "cot": {"max_new_tokens": 8, "stop": ["\n\n"]},
        "seeds": [0],
    }
    path.write_text(json.dumps(spec, indent=2))
    return path


def evaluation_tables(spec_path: Path, uri: str, cache: Path, tmp_path: Path) -> dict:
    """Run the spec; (condition, language) -> (the run, its predictions by question id)."""
    from relxfer.run.runner import StudyRunner
    from relxfer.spec.load import load_spec
    from relxfer.tracking.client import Tracker

    tracker = Tracker(uri)
    outcomes = StudyRunner(load_spec(spec_path), tracker, cache, progress=False).run()
    assert [o.status for o in outcomes] == ["FINISHED"] * 4, [(o.cell.run_name, o.error) for o in outcomes]
    tables = {}
    for outcome in outcomes:
        run = tracker.client.get_run(outcome.run_id)
        saved = tracker.client.download_artifacts(outcome.run_id, "predictions.json", str(tmp_path / outcome.run_id))
        table = json.loads(Path(saved).read_text())
        rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
        tables[(outcome.cell.condition, outcome.cell.language)] = (run, rows)
    return tables


def test_the_tinker_engine_scores_and_generates_in_the_familys_format_as_the_local_engine(
    twin_server, sib200_dir, relxfer_cache, tmp_path, monkeypatch
):
    from relxfer.models import real_tokenizers

    monkeypatch.setenv(real_tokenizers.TOKENIZERS_ENV, str(tokenizers_dir()))
    monkeypatch.setenv("TINKER_API_KEY", "tml-relxfer-test")
    monkeypatch.setenv("TINKER_BASE_URL", twin_server.base_url)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    engine = {"kind": "tinker", "base_model": twin_server.base_model, "request_timeout_s": 300}
    service = evaluation_tables(twin_spec(tmp_path / "tinker.json", sib200_dir, engine), uri, relxfer_cache, tmp_path)
    local = evaluation_tables(
        twin_spec(tmp_path / "local.json", sib200_dir, {"kind": "local"}), uri, relxfer_cache, tmp_path
    )

    assert sorted(service) == sorted(local) == sorted((c, lang) for c in ("baseline", "cot") for lang in LANGUAGES)
    worst = 0.0
    for cell, (run, rows) in service.items():
        local_run, local_rows = local[cell]
        assert run.data.tags["relxfer.engine"] == "tinker" and local_run.data.tags["relxfer.engine"] == "local"
        # The same rendered prompts: the template id hashes a prompt rendered through the chat template.
        assert run.data.params["template_id"] == local_run.data.params["template_id"]
        assert sorted(rows) == sorted(local_rows) and len(rows) == 4
        labels = [column for column in next(iter(rows.values())) if column.startswith("logprob_")]
        assert len(labels) == 7
        worst = max(worst, *(abs(row[c] - local_rows[q][c]) for q, row in rows.items() for c in labels))
        if cell[0] == "cot":
            assert [row["cot_text"] for row in rows.values()] == [local_rows[q]["cot_text"] for q in rows]
            for metric in ("truncated_rate", "parse_failure_rate"):
                assert run.data.metrics[metric] == local_run.data.metrics[metric]
    print(f"max |tinker - local| label log-prob on the Qwen3 twin: {worst:.2e}")
    assert worst < TOLERANCE
