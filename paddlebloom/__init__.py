"""paddlebloom: instruction-tune and deploy BLOOM models on PaddlePaddle."""
from .cpu import prefer_avx2_mkl_on_amd

# Before any submodule imports Paddle: MKL picks its kernels when it first runs (see cpu.py).
prefer_avx2_mkl_on_amd()
