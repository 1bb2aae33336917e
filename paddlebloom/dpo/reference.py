"""The reference model DPO measures the policy against: frozen at the starting weights.

- full tuning: a second copy of the starting model, frozen (eval mode, no gradients);
- an adapter over a frozen base (LoRA): the policy itself with its adapter switched off, i.e.
  the base model: no second copy.
Both score in eval mode (no dropout), so a pair's reference log-probabilities never change.
"""

import paddle

from ..adapter import adapter_of
from ..checkpoint import load_into
from ..model import BloomForCausalLM
from .loss import sequence_logps


class FrozenCopy:
    def __init__(self, config, model_dir: str, parallel=None):
        self.model = BloomForCausalLM(config, parallel=parallel)
        load_into(self.model, model_dir)
        self.model.eval()
        for param in self.model.parameters():
            param.stop_gradient = True

    def logps(self, input_ids, attention_mask, labels, average: bool = False):
        with paddle.no_grad():
            return sequence_logps(self.model, input_ids, attention_mask, labels, average)


class AdaptersOff:
    def __init__(self, policy):
        self.policy = policy

    def logps(self, input_ids, attention_mask, labels, average: bool = False):
        training = self.policy.training
        self.policy.eval()
        try:
            with paddle.no_grad(), adapter_of(self.policy).disabled(self.policy):
                return sequence_logps(self.policy, input_ids, attention_mask, labels, average)
        finally:
            if training:
                self.policy.train()


def build_reference(policy, args, config, model_dir: str):
    return AdaptersOff(policy) if adapter_of(policy).frozen_base else FrozenCopy(config, model_dir, policy.parallel)
