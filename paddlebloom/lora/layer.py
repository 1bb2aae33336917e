"""A LoRA branch around a (tensor-parallel) linear layer: y = base(x) + dropout(x) A B * alpha / r.

Tensor parallelism follows the base layer (Megatron-style):
- column-parallel base: A [in, r] is replicated, B [r, out/tp] is split like the base weight.
  The low-rank activation xA is replicated, so its gradient is summed over ranks (copy_to_tp).
- row-parallel base: A [in/tp, r] is split like the base weight, B [r, out] replicated; the
  partial products xA are summed over ranks (reduce_from_tp) before B.
Parameter names (`weight`, `bias`, `lora_A`, `lora_B`) are PaddleNLP's.
"""

import math

import paddle
import paddle.nn as nn

from ..parallel.collectives import copy_to_tp, reduce_from_tp
from ..parallel.layers import ColumnParallelLinear, RowParallelLinear, split_along


class LoRALinear(nn.Layer):
    def __init__(self, base: nn.Layer, r: int, alpha: float, dropout: float):
        super().__init__()
        self.row_parallel = isinstance(base, RowParallelLinear)
        if not isinstance(base, (ColumnParallelLinear, RowParallelLinear)):
            raise TypeError(f"LoRA wraps BLOOM's linear layers, not {type(base).__name__}")
        self.base = [base]  # kept out of the parameter tree: its weight and bias are re-registered below
        self.weight, self.bias = base.weight, base.bias
        in_local, out_local = base.weight.shape
        # A: Kaiming-uniform (as peft); B: zeros, so training starts from the base model.
        self.lora_A = self.create_parameter(
            [in_local, r],
            attr=paddle.ParamAttr(
                initializer=nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")
            ),
        )
        self.lora_B = self.create_parameter(
            [r, out_local], attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
        )
        if self.row_parallel:  # split like the base weight's input rows
            split_along(self.lora_A, 0)
        else:  # split like the base weight's output columns
            split_along(self.lora_B, 1)
        self.parallel = base.parallel
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        self.disabled = False  # LoRA.disabled: the base layer alone (DPO's reference)

    def forward(self, x):
        y = self.base[0](x)
        if self.merged or self.disabled:
            return y
        if self.row_parallel:
            low = reduce_from_tp(paddle.matmul(self.dropout(x), self.lora_A), self.parallel)
        else:
            low = copy_to_tp(paddle.matmul(self.dropout(x), self.lora_A), self.parallel)
        # Scale the rank-r activation, not the [tokens, out] product: r/out of the work.
        return y + paddle.matmul(low * self.scaling, self.lora_B)

    def merge(self) -> None:
        """Fold A B * scaling into the base weight (this rank's shard) and stop using the branch."""
        if not self.merged:
            with paddle.no_grad():
                self.weight.set_value(self.weight + paddle.matmul(self.lora_A, self.lora_B) * self.scaling)
            self.merged = True
