"""LLaVA-1.5-7B on POPE with the paper's recipe: ``python examples/paper/llava_pope.py --help``.

A thin wrapper around ``reproduce.py`` with ``--model llava --task pope``; every other flag is the same.
``--tiny`` runs the whole pipeline on a tiny random model with tiny data in seconds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce import main

if __name__ == "__main__":
    main(sys.argv[1:], model="llava", task="pope")
