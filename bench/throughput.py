"""`python -m bench.throughput` from a checkout: the harness itself ships in the package
(`collector/harness/throughput.py`, `tailrace bench throughput`)."""

from collector.harness.throughput import main

if __name__ == "__main__":
    main()
