"""`python -m bench.watchmodes` from a checkout: the harness itself ships in the package
(`collector/harness/watchmodes.py`, `tailrace bench watchmodes`)."""

from collector.harness.watchmodes import main

if __name__ == "__main__":
    main()
