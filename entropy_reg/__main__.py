"""``python -m entropy_reg ...`` is the ``entropy-reg`` command."""

from entropy_reg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
