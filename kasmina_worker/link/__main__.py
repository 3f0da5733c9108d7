"""`python -m kasmina_worker.link ADDRESS TIMEOUT_S`: the worker link's child process (see worker_link.py).

Its own entry point: `python -m kasmina_worker.link.worker_link` would run, as `__main__`, a module
that importing the package has already loaded (kasmina_worker imports it), and runpy warns of that.
"""

import sys

from kasmina_worker.link.worker_link import _serve_link

_serve_link(sys.argv[1], float(sys.argv[2]))
