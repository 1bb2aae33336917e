from setuptools import find_packages, setup

setup(
    name="paddlebloom",
    version="0.1.0",
    description="Instruction-tune and deploy BLOOM models on PaddlePaddle, from a laptop to GPU nodes",
    packages=find_packages(include=["paddlebloom", "paddlebloom.*"]),
    package_data={
        "paddlebloom.evaluation": ["judge_rubric.txt"],
        "paddlebloom.serving": ["static/*.html"],
        "paddlebloom.ops": ["csrc/*.cc", "csrc/*.h"],
    },
    python_requires=">=3.9",
    # Versions are pinned in requirements.txt (measured to install together); kept loose here.
    install_requires=["paddlepaddle", "paddlenlp", "numpy", "tokenizers", "safetensors", "tqdm", "matplotlib"],
    entry_points={
        "console_scripts": [
            "paddlebloom-create-tiny=paddlebloom.create_tiny:main",
            "paddlebloom-sample=paddlebloom.tools.sample:main",
            "paddlebloom-convert=paddlebloom.tools.convert:main",
            "paddlebloom-pretokenize=paddlebloom.tools.pretokenize:main",
            "paddlebloom-stats=paddlebloom.tools.stats:main",
            "paddlebloom-prune-vocab=paddlebloom.tools.prune_vocab:main",
        ]
    },
)
