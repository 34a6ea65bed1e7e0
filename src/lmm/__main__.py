"""`python -m lmm ...` is `lmm ...` (lmm.cli)."""

from lmm.cli import main

if __name__ == "__main__":
    main()
