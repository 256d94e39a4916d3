"""Packages for setuptools: the code packages (data directories among them), and the source tree's data/
installed as `latpred_data` (pyproject.toml cannot map a directory to another package name beside a search)."""
from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["predictor*", "profiler*", "service*"], exclude=["*.__pycache__"]),
        "latpred_data", "latpred_data.priors", "latpred_data.probes",
    ],
    package_dir={"latpred_data": "data"},
)
