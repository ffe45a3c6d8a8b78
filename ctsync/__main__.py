"""`python -m ctsync` and the `ctsync` console script."""

from ctsync.cli import app


def main() -> None:
    app(prog_name="ctsync")


if __name__ == "__main__":
    main()
