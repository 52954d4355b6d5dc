"""Safety: matching images against lists of known-bad hashes.

- `hashindex.py`: `HammingIndex`, PDQ-style 256-bit hashes found within a Hamming distance of a
  query without scanning the list (multi-index hashing), and the reader of a hash list file.
- `pdq.py`: Meta's PDQ hash of an image, in the byte order of the hex form lists use.
"""

from __future__ import annotations

from transforms.safety.hashindex import HammingIndex, read_hash_list
from transforms.safety.pdq import PdqHash, pdq_hash

__all__ = ["HammingIndex", "PdqHash", "pdq_hash", "read_hash_list"]
