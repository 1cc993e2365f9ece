"""Build hook: compiles the native audio kernel (cffi API mode) at install time."""

from setuptools import setup

setup(cffi_modules=["native/build_kernel.py:ffibuilder"])
