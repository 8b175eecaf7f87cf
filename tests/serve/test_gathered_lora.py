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


class _FlatteningBlock(torch.nn.Module):
    """A residual feed-forward block that flattens batch and sequence before its linear layers, as
    some architectures' layers do."""

    def __init__(self, width: int):
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])  # [rows * tokens, width]
        return hidden + self.down(torch.relu(self.up(flat))).view(hidden.shape)


def test_a_layer_that_reads_flattened_rows_adds_each_token_its_own_rows_update():
    torch.manual_seed(0)
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["up", "down"], "init_lora_weights": False}
    peft = get_peft_model(torch.nn.Sequential(_FlatteningBlock(8)), LoraConfig(**config), adapter_name="one")
    peft.add_adapter("two", LoraConfig(**config))
    peft.eval()
    hidden = torch.randn(3, 5, 8)
    rows = ["one", "two", None]
    with torch.inference_mode():
        alone = []
        for row, adapter in enumerate(rows):
            if adapter is None:
                with peft.disable_adapter():
                    alone.append(peft(hidden[row : row + 1]))
            else:
                peft.set_adapter(adapter)
                alone.append(peft(hidden[row : row + 1]))
        gathered = GatheredLora(peft)
        gathered.sync({"one", "two"})
        gathered.engage()
        with gathered.rows(rows, torch.device("cpu")):
            together = peft.get_base_model()(hidden)
    assert (alone[0] - alone[2]).abs().max() > 1e-2 and (alone[1] - alone[0]).abs().max() > 1e-2
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)
