"""Export of the whole generation loop (prefill + KV-cached decode + sampling) as one static program."""
