"""``mergesmith.load_merged`` on plain merges: the class config.json names, every merged weight in place."""

from __future__ import annotations

import json

import pytest
import torch

import mergesmith
from tests.helpers import load_tensors

EXPECTED = {"llama_family": "LlamaForCausalLM", "gpt2_family": "GPT2LMHeadModel", "bert_family": "BertForMaskedLM"}


def _merge(family, out):
    config = {
        "merge_method": "linear",
        "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in family.experts[:2]],
    }
    mergesmith.merge(config, out, threads=1)
    return out


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_plain_merge_loads_with_the_class_config_names(fixture, request, tmp_path):
    family = request.getfixturevalue(fixture)
    out = _merge(family, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == [EXPECTED[fixture]]
    model = mergesmith.load_merged(out)
    assert type(model).__name__ == EXPECTED[fixture]
    # every merged tensor is in the model under its own name, with the merged bytes (tied heads are the same tensor)
    state = model.state_dict()
    merged = load_tensors(out)
    assert set(merged) <= set(state), sorted(set(merged) - set(state))
    for name, tensor in merged.items():
        assert torch.equal(state[name], tensor), name
    # and the model holds no parameter the directory lacks (a randomly initialised head would be one)
    assert set(dict(model.named_parameters())) <= set(merged), sorted(set(dict(model.named_parameters())) - set(merged))


def test_a_class_name_outside_transformers_falls_back_to_auto_model(llama_family, tmp_path):
    out = _merge(llama_family, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["os.system"]
    (out / "config.json").write_text(json.dumps(config))
    assert type(mergesmith.load_merged(out)).__name__ == "LlamaModel"


def test_protected_and_continual_outputs_load_with_their_class(gpt2_family, llama_family, tmp_path):
    from mergesmith.continual import continual_add
    from mergesmith.protect import protect_checkpoint

    protect_checkpoint(gpt2_family.experts[0], tmp_path / "protected", seed=1)
    protected = mergesmith.load_merged(tmp_path / "protected")
    original = mergesmith.load_merged(gpt2_family.experts[0])  # a plain checkpoint without a manifest
    assert type(protected).__name__ == type(original).__name__ == "GPT2LMHeadModel"
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(protected(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-4)
    continual_add(llama_family.experts[0], llama_family.experts[1], tmp_path / "step2", base=llama_family.base)
    assert type(mergesmith.load_merged(tmp_path / "step2")).__name__ == "LlamaForCausalLM"
