"""`--source replay`: history from Binance public-data files. files.py reads a file's lines as
events (pure), ledger.py notes on disk how far Kafka acknowledged each file, source.py runs
the replay as a Source (pace, progress, --resume)."""
