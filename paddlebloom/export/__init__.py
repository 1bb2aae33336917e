"""Export of the step model (new tokens + persistent KV cache in, logits of picked positions out)
as a paddle.inference program."""
