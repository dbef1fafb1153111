"""A host for the orphan test: ``python _orphan_host.py``. Starts a pool whose handler
spawns ``sleep 1000`` (a child and a detached grandchild), prints their pids as one
JSON line, then idles until killed."""

import json
import os
import time

from dspex.pool import Pool

here = os.path.dirname(os.path.abspath(__file__))
pool = Pool("orphans", 1, handlers=[os.path.join(here, "_fault_handlers.py")], forward_stderr=False)
pool.start()
kids = [pool.call("spawn", timeout=60), pool.call("spawn", True, timeout=60)]
print(json.dumps({"pids": [k["pid"] for k in kids], "worker": kids[0]["worker"]}), flush=True)
time.sleep(600)
