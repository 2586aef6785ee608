"""Compatibility shim for python-astm 0.5.0 on Python 3.10+ (used by bench/codec.py only).

python-astm 0.5.0 does ``from collections import Iterable``, an alias removed in Python
3.10. Putting this directory on PYTHONPATH restores the alias before anything imports it.
"""

import collections
import collections.abc

if not hasattr(collections, "Iterable"):
    collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
