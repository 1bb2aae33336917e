"""DPO's losses, with TRL's formulas (DPOTrainer.dpo_loss, trl 0.24), and the sequence scores they compare.

For a prompt x with a chosen answer y_w and a rejected answer y_l, the policy pi and the frozen
reference pi_ref give
    h = (log pi(y_w|x) - log pi(y_l|x)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x))
    sigmoid (DPO, Rafailov et al.):     -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
                                        (eps = --label_smoothing: conservative DPO, cDPO)
    ipo (Azar et al., eq. 17):          (h - 1 / (2 beta))^2, with log-probabilities averaged
                                        over each answer's tokens (as TRL does for IPO)
    implicit rewards:                   beta (log pi(y|x) - log pi_ref(y|x)), no gradient
"""

import paddle
import paddle.nn.functional as F

from ..parallel.layers import parallel_token_nll

LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logps(model, input_ids, attention_mask, labels, average: bool = False):
    """log p(answer | prompt) of every row: the sum (average: mean) over its scored labels.

    Goes through the tensor-parallel cross-entropy (vocabulary-split logits are never gathered),
    so every rank holds the same scores and gradients flow to each rank's shard.
    """
    hidden, _ = model.bloom(input_ids, attention_mask)
    head = model.bloom.word_embeddings
    nll, counted = parallel_token_nll(head.logits(hidden), labels, head.start, head.vocab_size)
    rows = input_ids.shape[0]
    logps = -nll.reshape([rows, -1]).sum(axis=-1)
    if average:
        logps = logps / paddle.clip(counted.reshape([rows, -1]).sum(axis=-1), min=1.0)
    return logps


def preference_loss(
    chosen, rejected, ref_chosen, ref_rejected, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0
):
    """Per-pair losses and the implicit rewards of the chosen and rejected answers."""
    h = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.log_sigmoid(beta * h) * (1.0 - label_smoothing) - F.log_sigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"--loss_type {loss_type!r}: choose from {', '.join(LOSS_TYPES)}")
    return losses, (beta * (chosen - ref_chosen)).detach(), (beta * (rejected - ref_rejected)).detach()
