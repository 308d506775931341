"""The Kafka edge: the group consumer whose offsets live in PostgreSQL (client), where each
assigned partition stands (positions), and the guard that gives a spinning client up
(spin_guard). It imports the core and the settings, never the loop, the flusher or app."""
