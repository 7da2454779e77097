"""osnet-beam: OSNet re-identification features for large tables of person crops, on Apache Beam.

``pip install .`` for a laptop or a worker (``--setup_file ./setup.py`` ships it to Dataflow or
Flink workers). Install ``torch`` first: the CPU wheel for CPU machines, a CUDA build on GPU
workers (see deploy/dataflow/Dockerfile); ``torch>=2.1`` is all this package asks for.
"""
from setuptools import setup

setup(
    name="osnet-beam",
    version="0.1.0",
    description="Batch OSNet-IBN re-identification features for tables of person crops on Apache Beam",
    long_description=__doc__,
    python_requires=">=3.10",
    packages=["model", "transforms", "pipeline", "weights"],
    package_data={"weights": ["*.pth", "README.md"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "pillow>=9.0",
        "pyarrow>=14",
        "apache-beam>=2.60",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "onnxscript>=0.2",  # the torch.export-based ONNX exporter, the fallback of the default one
        "tqdm>=4.60",  # the progress bars of the job and of evaluate
        "matplotlib>=3.7",  # the histograms of evaluate / compare --report
        "numba>=0.59",  # model/pillow_resize.py: Pillow's resize, bit for bit, compiled and without the GIL
        "openvino>=2024.0",  # CPU bf16 (--precision bf16 on AVX512-BF16/AMX cores); pulls no torch
    ],
    extras_require={
        "dataflow": ["apache-beam[gcp]>=2.60"],
        # [gcp] lets the tests build a Dataflow job offline (--dry_run) as a user would submit it
        "test": [
            "pytest>=7",
            "ruff>=0.6",  # .ci/run lints with ruff.toml's checks
            "pytest-xdist>=3.5",  # pytest.ini's -n 2: the suite on both cores of a 2-core machine
            "hypothesis>=6.80",
            "pandas>=2,<2.4",
            "psutil>=5.9",
            "matplotlib>=3.7",
            "pyyaml>=6",
            "apache-beam[gcp]>=2.60",
        ],
    },
    entry_points={"console_scripts": ["osnet-beam=pipeline.cli:console"]},
)
