"""audio-opd: on-policy distillation of compact ASR models.

Each ``stages.<name>`` module is a standalone stage CLI (``python -m stages.<name> --help``); the
subpackages (``data``, ``models``, ``opd``, ``train``, ``eval``, ``common``) hold the library code
those CLIs call.
"""

__version__ = "0.1.0"
