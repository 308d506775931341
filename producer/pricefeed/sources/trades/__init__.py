"""`--source binance-trades`: Binance's aggregate trades, live over WebSocket and caught up
through REST, published once each and in id order per symbol."""
