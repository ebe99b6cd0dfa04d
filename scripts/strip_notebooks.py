"""Strip outputs and execution counts from notebooks, so only their source is committed.

    python scripts/strip_notebooks.py notebooks/*.ipynb          # clean them in place
    python scripts/strip_notebooks.py --check notebooks/*.ipynb  # exit 1 if any has outputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat


def strip(nb: nbformat.NotebookNode) -> bool:
    """Clear every code cell's outputs and execution count; True if anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs, cell.execution_count = [], None
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any has outputs")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "has outputs" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
