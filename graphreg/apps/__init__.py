"""The applications on top of the library: the ``graphreg`` command line, cohort batches, the
benchmark, figures and reports, Learn2Reg task folders.
"""
