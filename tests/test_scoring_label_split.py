"""How the label-id mode splits a question's labels into the tokens they share and their last
tokens, the request it builds, and how it reads an answer back (vLLM's answer shape)."""

from __future__ import annotations

import pytest

from relxfer.evaluate.scoring_modes import label_ids_request, read_label_ids, split_labels

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("labels", "split"),
    [
        ([[16], [17], [18], [19]], ([], [16, 17, 18, 19])),
        ([[220, 16], [220, 17], [220, 18], [220, 19]], ([220], [16, 17, 18, 19])),
        ([[220, 16, 15], [220, 16, 16], [220, 16, 17]], ([220, 16], [15, 16, 17])),
        ([[5, 7], [5, 7], [5, 8]], ([5], [7, 7, 8])),
    ],
)
def test_labels_differing_in_their_last_token_split_into_shared_and_last(labels, split):
    assert split_labels(labels) == split


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([[220, 16], [220, 17, 17], [220, 18, 18, 18]], "the labels are 2/3/4 tokens long and share 1 leading token"),
        ([[1, 2], [3, 4]], "the labels are 2 tokens long and share 0 leading tokens"),
        ([[220], [220, 16]], "the labels are 1/2 tokens long and share 1 leading token"),
        ([[16], [16]], "the labels are 1 tokens long and share 1 leading token"),
    ],
)
def test_labels_differing_earlier_give_the_reason(labels, reason):
    assert split_labels(labels) == reason + ": they differ in more than their last token"


def test_shared_tokens_go_with_the_prompt_and_their_logprobs_are_added():
    prompt, shared, last = [1, 2, 3], [220], [16, 17]
    body = label_ids_request("m", prompt, last, shared)
    assert body["prompt"] == [1, 2, 3, 220] and body["logprob_token_ids"] == [16, 17]
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    assert "prompt_logprobs" not in label_ids_request("m", prompt, [16, 17])
    answer = {
        "choices": [
            {
                "logprobs": {"top_logprobs": [{"token_id:16": -1.5, "token_id:17": -2.0, "token_id:99": -0.1}]},
                "prompt_logprobs": [
                    None,
                    {"2": {"logprob": -3.0, "rank": 4}},
                    {"3": {"logprob": -4.0, "rank": 9}},
                    {"220": {"logprob": -0.25, "rank": 1}, "11": {"logprob": -0.1, "rank": 0}},
                ],
            }
        ]
    }
    assert read_label_ids(answer, prompt, last, shared) == [-1.75, -2.25]
    assert read_label_ids(answer, prompt, [16, 18], shared) == [-1.75, None]
    answer["choices"][0]["prompt_logprobs"][3] = {"11": {"logprob": -0.1, "rank": 0}}
    assert read_label_ids(answer, prompt, last, shared) == [None, None]
    assert read_label_ids(answer, prompt, last) == [-1.5, -2.0]  # no shared tokens: no prompt log-probs read
