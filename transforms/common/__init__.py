"""Stage-agnostic pieces every stage may use.

- Beam building blocks: `clustering.py` (k-means on a deterministic sample, assignment),
  `tiling.py` (big groups cut into tiles), `unionfind.py` (links → kept groups), `routing.py`
  (candidates and samples passed through), `progress.py` (metrics with fixed names, live progress).
- Files: `files.py` (atomic writes), `manifest.py` (what a run wrote, and only that is ever deleted).
- `checks.py` (config range checks with one message shape), `errors.py` (bad input → exit 2).
"""
