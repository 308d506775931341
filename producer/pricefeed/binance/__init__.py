"""The Binance edge: its REST API (rest.py). Sources use it; it knows no source."""
