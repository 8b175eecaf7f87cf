"""The gathered LoRA forward against PEFT's own mixed-batch forward (`adapter_names`)."""

import torch
from peft import LoraConfig, get_peft_model

from serve.gathered_lora import GatheredLora
from trainables import models


def test_a_mixed_batch_answers_as_peft_with_adapter_names(tiny_model):
    """Rows of two adapters of other ranks and scalings (one on fewer layers) and base rows, in one
    batch: every row's logits are PEFT's, for the same rows again and for other rows, also once an
    adapter is evicted and when switched off."""
    torch.manual_seed(0)
    peft = get_peft_model(
        models.load_model(tiny_model),
        LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False),
        adapter_name="small",
    )
    rslora = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"])
    peft.add_adapter("rs", LoraConfig(**{**rslora.to_dict(), "init_lora_weights": False}))
    peft.eval()
    inputs = {
        "input_ids": torch.randint(3, 100, (4, 6)),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
    }
    inputs["attention_mask"][1, :2] = 0  # a left-padded row

    def peft_logits(rows):
        return peft(**inputs, adapter_names=[row or "__base__" for row in rows]).logits

    def gathered_logits(gathered, rows):
        with gathered.rows(rows, torch.device("cpu")):
            return peft.get_base_model()(**inputs).logits

    rows, other_rows = ["small", None, "rs", "small"], ["rs", "small", None, "rs"]
    with torch.inference_mode():
        expected, base = peft_logits(rows), peft_logits([None] * 4)
        expected_other = peft_logits(other_rows)  # before the gathered hooks switch PEFT's layers off
        assert (expected[[0, 2, 3]] - base[[0, 2, 3]]).abs().max() > 1e-2  # the adapters change the rows
        gathered = GatheredLora(peft)
        gathered.sync({"small", "rs"})
        gathered.engage()
        torch.testing.assert_close(gathered_logits(gathered, rows), expected, rtol=1e-5, atol=1e-5)
        # The same rows again (their gathered factors kept), then other rows (gathered anew).
        torch.testing.assert_close(gathered_logits(gathered, rows), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            gathered_logits(gathered, other_rows), expected_other, rtol=1e-5, atol=1e-5
        )

        peft.delete_adapter("rs")  # evicted: its slot goes
        gathered.sync({"small"})
        rows = ["small", None, None, "small"]
        evicted = gathered_logits(gathered, rows)
        gathered.close()  # PEFT's own layers answer again
        torch.testing.assert_close(evicted, peft_logits(rows), rtol=1e-5, atol=1e-5)
