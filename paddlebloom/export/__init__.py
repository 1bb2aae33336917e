"""Export of the step model (new tokens + persistent KV cache in, last-token logits out) as a paddle.inference program."""
