"""BLOOM's byte-level BPE tokenizer over the Rust `tokenizers` library.

Reads the real bigscience `tokenizer.json` as it is, or PaddleNLP's `vocab.json` + `merges.txt`
(GPT-2 pre-tokenisation, which is what PaddleNLP's BloomTokenizer does). Byte-level BPE encodes
any text, so decode(encode(s)) == s. Special tokens are BLOOM's: <unk>=0 <s>=1 </s>=2 <pad>=3.
"""

import functools
import hashlib
import json
import os
from typing import Dict, List, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


class BloomTokenizer:
    def __init__(self, backend: Tokenizer):
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"tokenizer lacks one of BLOOM's special tokens {SPECIAL_TOKENS}")
        self.unk_token_id, self.bos_token_id, self.eos_token_id, self.pad_token_id = ids
        self.eos_token = "</s>"

    @classmethod
    def from_pretrained(cls, directory: str) -> "BloomTokenizer":
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            return cls(Tokenizer.from_file(os.path.join(directory, "tokenizer.json")))
        vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if not (os.path.isfile(vocab) and os.path.isfile(merges)):
            raise FileNotFoundError(f"{directory}: no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
        backend = Tokenizer(models.BPE.from_file(vocab, merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def fingerprint(self) -> str:
        """A short hash of the vocabulary: what token ids stored on disk mean."""
        vocab = sorted(self.backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]

    def encode(self, text: str) -> List[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: a token can hold part of a character, so its text alone may
        not be valid UTF-8 (OpenAI's logprobs report such tokens by their bytes). Special tokens:
        their own text, though decode() skips them."""
        symbol = self.backend.id_to_token(int(token_id))
        if symbol is None:
            return b""
        table = _byte_symbols()
        if symbol in SPECIAL_TOKENS or any(ch not in table for ch in symbol):
            return symbol.encode("utf-8")
        return bytes(table[ch] for ch in symbol)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in (self.unk_token_id, self.bos_token_id, self.eos_token_id, self.pad_token_id)

    def save_pretrained(self, directory: str, model_max_length: int = 2048) -> None:
        """Write tokenizer.json for us and Hugging Face, vocab.json + merges.txt for PaddleNLP."""
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        if isinstance(self.backend.model, models.BPE):
            self.backend.model.save(directory)  # vocab.json, merges.txt
        specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
        config = {
            "tokenizer_class": "BloomTokenizer",
            "padding_side": "left",
            "model_max_length": model_max_length,
            "add_prefix_space": False,
            **specials,
        }
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(directory, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump(specials, f, indent=2)


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> Dict[str, int]:
    """Byte-level BPE writes each byte as a printable character (GPT-2's table, which BLOOM's
    tokenizer uses): bytes that are printable Latin-1 stand for themselves, the other 68 take the
    characters from U+0100 on, in byte order. Symbol -> byte."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + shifted)] = byte
            shifted += 1
    return table


def train_byte_level_bpe(texts: Sequence[str], vocab_size: int) -> BloomTokenizer:
    """Train a BLOOM-style tokenizer: the 4 special tokens first, all 256 byte symbols, then merges."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return BloomTokenizer(backend)
