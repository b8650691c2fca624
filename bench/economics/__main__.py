"""`python -m bench.economics` or `python bench/economics`: run the sections, write the JSON and the doc."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.economics.cli import main  # noqa: E402

main()
