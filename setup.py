"""Builds fastbp: the Python packages (kernels/ installed as fastbp.kernels) and, from the next
change on, the Cython kernels."""
from setuptools import setup

setup()
