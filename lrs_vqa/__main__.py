"""``python -m lrs_vqa`` and the ``lrs-vqa`` console script."""

import sys

from lrs_vqa.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
