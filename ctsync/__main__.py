"""`python -m ctsync` and the `ctsync` console script."""

import gc

from ctsync.cli import app


def main() -> None:
    # A run allocates millions of short-lived dicts and no reference cycles worth
    # collecting early: rarer young-generation collections save ~7% of the CPU time
    # (measured on a 100k-message dry run).
    gc.set_threshold(50_000, 20, 100)
    app(prog_name="ctsync")


if __name__ == "__main__":
    main()
