"""paddlebloom: instruction-tune and deploy BLOOM models on PaddlePaddle.

Importing the package changes nothing in the process: the entry points set up the runtime
(runtime.use_all_cores, cli.quiet_upstream_warnings; see workarounds.py).
"""
