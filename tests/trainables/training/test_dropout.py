"""The training loop's CPU dropout: nn.Dropout's distribution and scaling from fewer random bits."""

import pytest
import torch

from trainables import models
from trainables.methods import METHODS, BuildContext
from trainables.registries import trial_config
from trainables.training.dropout import CpuDropout, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_drops_each_element_with_probability_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    ones = torch.ones(2000, 1000, requires_grad=True)
    dropped = CpuDropout(p).train()(ones)
    # 2M elements: the dropped share's standard deviation is below 0.00036.
    assert (dropped == 0).float().mean().item() == pytest.approx(p, abs=0.002)
    assert dropped.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    dropped.sum().backward()
    # The gradient flows through the kept elements only, with the same scale.
    assert torch.equal(ones.grad, dropped.detach())


def test_masks_differ_from_row_to_row_and_follow_the_seed():
    torch.manual_seed(1)
    first = CpuDropout(0.5).train()(torch.ones(64, 256))
    torch.manual_seed(1)
    again = CpuDropout(0.5).train()(torch.ones(64, 256))
    assert torch.equal(first, again)
    assert len({tuple(row.tolist()) for row in first}) == 64


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_the_edge_probabilities_keep_or_drop_everything(p):
    hidden = torch.randn(8, 16)
    assert torch.equal(CpuDropout(p).train()(hidden), hidden * (1 - p))


def test_evaluation_mode_leaves_the_input_as_it_is():
    hidden = torch.randn(8, 16)
    assert torch.equal(CpuDropout(0.3).eval()(hidden), hidden)


def test_a_lora_model_gets_it_on_every_adapter_without_changing_its_weights(tiny_model):
    config = trial_config({"task": "qg", "method": "lora", "model": tiny_model})
    model = METHODS["lora"].wrap(
        models.load_model(tiny_model), config.hyperparameters, BuildContext(10, tiny_model, "")
    )
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts

    use_cpu_dropout(model)

    assert all(
        type(module) is CpuDropout and module.p == config.hyperparameters.dropout for module in dropouts
    )
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
