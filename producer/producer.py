"""Publish live Binance prices to Kafka. Run `python producer.py --help` for the settings."""

import sys

from pricefeed.app import main

if __name__ == "__main__":
    sys.exit(main())
