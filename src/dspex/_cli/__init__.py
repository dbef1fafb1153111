"""Implementation of the ``dspex`` command (entry point: ``dspex.cli:main``).

common.py    dispatch, error -> (exit code, one line + fix), output and input helpers
predict.py   dspex predict
run.py       dspex run
optimize.py  dspex optimize (progress display, atomic --out)
pools.py     dspex pools
lm.py        dspex lm serve|status|stop
doctor.py    dspex doctor
bench.py     dspex bench
"""
