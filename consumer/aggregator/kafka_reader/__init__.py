"""The Kafka edge: the group consumer whose offsets live in PostgreSQL (client), where each
assigned partition stands (positions), the guard that gives a spinning client up
(spin_guard), and the record batch it cannot decode (undecodable). It imports the core and
the settings, never the loop, the flusher or app."""
