"""`python -m ctsync.sandbox`: the `ctsync sandbox` command on its own."""

from ctsync.sandbox.cli import app

if __name__ == "__main__":
    app(prog_name="ctsync sandbox")
