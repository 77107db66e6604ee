"""safegrad: safe gradient clipping and NaN/Inf checks for TensorFlow training steps."""
import os
import re

from setuptools import find_packages, setup

_HERE = os.path.abspath(os.path.dirname(__file__))


def _read(*parts):
    with open(os.path.join(_HERE, *parts), encoding="utf-8") as f:
        return f.read()


_VERSION = re.search(r'^__version__ = "([^"]+)"', _read("safegrad", "_version.py"), re.M).group(1)

setup(
    name="safegrad",
    version=_VERSION,
    description=(
        "Gradient clipping and NaN/Inf checks for TensorFlow training steps that behave the same in "
        "TF1 Sessions and TF2 tf.function, from TF 1.15 to the newest release."
    ),
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["safegrad", "safegrad.*"]),
    python_requires=">=3.7",
    # TensorFlow is deliberately NOT a requirement: users pick tensorflow, tensorflow-cpu, a nightly
    # or a vendor build. `import safegrad` says clearly when it is missing or too old.
    install_requires=[],
    extras_require={
        # tensorboard: TF 2.21 no longer depends on it, and Keras's TensorBoard callback needs it.
        "tf": ["tensorflow>=1.15", "tensorboard"],
        "tf-cpu": ["tensorflow-cpu>=1.15", "tensorboard"],
        "tests": ["pytest>=6.2,<10", "numpy"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.7",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
