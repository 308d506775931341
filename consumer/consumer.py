"""Aggregate btc_price into 5-minute windows in PostgreSQL. `python consumer.py --help`."""

import sys

from aggregator.app import main

if __name__ == "__main__":
    sys.exit(main())
