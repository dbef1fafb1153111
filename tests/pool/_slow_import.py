"""A preload module that blocks: a template stuck importing (process-safety tests)."""

import os
import time

with open(os.environ["DSPEX_TEST_IMPORT_MARKER"], "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
