-- Migration 5: windows of trades and candles beside windows of price samples, with what a
-- trader reads from a candle (consumer/aggregator/core/windows.py: STATISTICS). Idempotent.
--
-- One row per symbol, window and feed: `samples` (the ticker poll, simulated prices),
-- `trades` (aggregate trades) and `klines` (the exchange's candles, replayed from files). A
-- poller and a trade stream for the same symbol then never spoil each other's window; the
-- view five_min_candles shows one row per window, the best feed there is.
ALTER TABLE five_min_bitcoin_event
    ADD COLUMN IF NOT EXISTS feed text NOT NULL DEFAULT 'samples'
        CHECK (feed IN ('samples', 'trades', 'klines')),
    -- NULL in windows of samples: nothing is known of volume there (not a fake zero). A
    -- candle carries no trade ids.
    ADD COLUMN IF NOT EXISTS volume numeric CHECK (volume >= 0),  -- sum of quantities
    ADD COLUMN IF NOT EXISTS quote_volume numeric CHECK (quote_volume >= 0),  -- of price x quantity
    ADD COLUMN IF NOT EXISTS trade_count bigint CHECK (trade_count >= 0),  -- raw trades
    ADD COLUMN IF NOT EXISTS first_trade_id bigint,
    ADD COLUMN IF NOT EXISTS last_trade_id bigint;
ALTER TABLE five_min_bitcoin_event
    ADD COLUMN IF NOT EXISTS vwap numeric
        GENERATED ALWAYS AS (quote_volume / NULLIF(volume, 0)) STORED,
    -- Whole when the window's raw trade ids are contiguous: no trade of it is missing. NULL
    -- where ids are not known (samples, candles).
    ADD COLUMN IF NOT EXISTS complete boolean
        GENERATED ALWAYS AS (trade_count = last_trade_id - first_trade_id + 1) STORED;

-- The key grows the feed (the old key is the first migration's primary key).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.conrelid = 'five_min_bitcoin_event'::regclass AND c.contype = 'p'
          AND a.attname = 'feed'
    ) THEN
        ALTER TABLE five_min_bitcoin_event
            DROP CONSTRAINT five_min_bitcoin_event_pkey,
            ADD PRIMARY KEY (symbol, five_min_start, feed);
    END IF;
END
$$;

-- One candle per symbol and window: trades (the market itself) before the exchange's candles
-- before price samples. What the dashboards and the rolling average read.
CREATE OR REPLACE VIEW five_min_candles AS
SELECT DISTINCT ON (symbol, five_min_start) *
FROM five_min_bitcoin_event
ORDER BY symbol, five_min_start,
    CASE feed WHEN 'trades' THEN 0 WHEN 'klines' THEN 1 ELSE 2 END;

-- The rolling average of migration 1, over one candle per window.
CREATE OR REPLACE VIEW rolling_avg_30min AS
SELECT
    symbol,
    five_min_start,
    five_min_end,
    sum(price_sum) OVER last_30_min / sum(event_count) OVER last_30_min AS rolling_avg_price,
    sum(event_count) OVER last_30_min AS rolling_event_count,
    count(*) OVER last_30_min AS rolling_window_count
FROM five_min_candles
WINDOW last_30_min AS (
    PARTITION BY symbol
    ORDER BY five_min_start
    RANGE BETWEEN interval '25 minutes' PRECEDING AND CURRENT ROW
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') THEN
        GRANT SELECT ON five_min_candles TO grafana_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'grafana_reader not granted: this user may not grant';
END
$$;
