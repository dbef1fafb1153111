"""A host program for the process-safety tests: ``python _host_script.py '<json>'``.

Prints one JSON line (host, template and worker pids) and then blocks in a call, so
the test can kill any of them. ``early``: report the template as soon as it exists.
"""

import json
import os
import sys
import threading
import time

from dspex.pool import Pool

cfg = json.loads(sys.argv[1])
here = os.path.dirname(os.path.abspath(__file__))
pool = Pool(
    "safety",
    int(cfg.get("size", 1)),
    handlers=[os.path.join(here, "_proc_handlers.py")],
    preload=list(cfg.get("preload", [])),
    forward_stderr=False,
)
if cfg.get("early"):
    threading.Thread(target=pool.start, daemon=True).start()
    while pool._zproc is None:
        time.sleep(0.001)
    print(json.dumps({"host": os.getpid(), "zygote": pool._zproc.pid}), flush=True)
    time.sleep(600)
pool.start()
info = {"host": os.getpid(), "zygote": pool.stats()["template"]["pid"], "workers": pool.workers()}
print(json.dumps(info), flush=True)
while True:  # stays a live host (re-running the call) until killed
    try:
        pool.call("block", cfg["marker"])
    except Exception:
        time.sleep(0.01)
