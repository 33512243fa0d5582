"""quantd's benchmark suite.

Measures quantd's queue operations side by side, in one run, with a
baseline that follows the reference file protocol, with peer queue
libraries, and with what the disk itself can do. Run ``python -m bench``
(``--quick`` for a smoke check, ``--json PATH`` to write every figure).
"""
