"""The KV cache the step-wise engine owns: fixed slots of fixed length, shared with the program without copies.

Layout [layers, 2 (keys, values), slots, heads, max_len, head_dim]: each (slot, head) holds its
tokens contiguously, which is what attention reads. The memory is a NumPy array, handed to Paddle
through DLPack (zero-copy) so the eager model and `paddle.inference` (`share_external_data`)
write into the same bytes that beam search reorders and a prefix adapter is copied into.
A slot is a request's for its whole life; the engine tracks how many positions are filled.
"""

from typing import List, Optional

import numpy as np
import paddle


class SlotsExhausted(RuntimeError):
    """Every slot is taken."""


class KVCache:
    def __init__(self, n_layer: int, n_head: int, head_dim: int, slots: int, max_len: int, dtype: str = "float32"):
        if slots < 1 or max_len < 1:
            raise ValueError(f"a KV cache needs >= 1 slot of >= 1 position (got {slots} x {max_len})")
        self.n_layer, self.n_head, self.head_dim, self.dtype = n_layer, n_head, head_dim, dtype
        self._allocate(slots, max_len)

    def _allocate(self, slots: int, max_len: int) -> None:
        self.slots, self.max_len = slots, max_len
        self.array = np.zeros([self.n_layer, 2, slots, self.n_head, max_len, self.head_dim], dtype=self.dtype)
        self._free: List[int] = list(range(slots - 1, -1, -1))
        self._tensor = None

    @property
    def tensor(self):
        """The same memory as a paddle Tensor (created once per allocation)."""
        if self._tensor is None:
            self._tensor = paddle.utils.dlpack.from_dlpack(self.array.__dlpack__())
            if self._tensor.data_ptr() != self.array.ctypes.data:  # a copy would silently lose every write
                raise RuntimeError("paddle copied the KV cache instead of sharing it")
        return self._tensor

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.n_layer * self.n_head * self.head_dim * self.array.itemsize

    def free_slots(self) -> int:
        return len(self._free)

    def ensure(self, slots: int, max_len: int) -> None:
        """Grow to at least slots x max_len; only while no slot is in use (nothing to carry over)."""
        if slots <= self.slots and max_len <= self.max_len:
            return
        if len(self._free) != self.slots:
            raise RuntimeError("cannot resize a KV cache that is in use")
        self._allocate(max(slots, self.slots), max(max_len, self.max_len))

    def allocate(self, prefix: Optional[np.ndarray] = None) -> int:
        """A free slot; with a prefix adapter's [2 * n_layer, heads, n_prefix, head_dim] keys/values
        written to its first positions (the caller starts the slot at n_prefix)."""
        if not self._free:
            raise SlotsExhausted(f"all {self.slots} KV-cache slots are in use")
        slot = self._free.pop()
        if prefix is not None:
            n = prefix.shape[2]
            self.array[:, 0, slot, :, :n] = prefix[: self.n_layer]
            self.array[:, 1, slot, :, :n] = prefix[self.n_layer :]
        return slot

    def release(self, slot: int) -> None:
        """Give the slot back. Its stale keys/values stay: the next owner's filled length starts
        at 0 (or past its prefix), and attention never reads past a slot's filled length."""
        if slot in self._free or not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in use")
        self._free.append(slot)

    def copy(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of one slot to another (beam search forks a beam)."""
        self.array[:, :, target, :, :length] = self.array[:, :, source, :, :length]
