"""Entry point of `coi-helper` (stub until the helper lands)."""

import sys

from coi.helper import __version__


def main() -> int:
    """Print the version; the serving code comes with the helper issue."""
    print(f"coi-helper {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
