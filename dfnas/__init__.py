"""dfnas: data-free neural architecture search.

Pipeline (one sub-package per stage): ``teachers`` -> ``synthesis`` -> ``data`` -> ``spaces`` ->
``search`` -> ``train`` -> ``export``.
"""

__version__ = "0.1.0"
