"""The fake Binance answers as Binance's spot API documentation (rest-api.md, errors.md) says,
over real HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import requests

from tests.harness import FakeBinance, Fault, wait_until
from tests.harness.fake_binance import MISSING, RESTRICTED_LOCATION_BODY
from tests.producer_runs import BTC, ETH  # the prices of the `binance` fixture

TICKER = "/api/v3/ticker/price"
JSON_TYPE = "application/json;charset=UTF-8"
ILLEGAL_SYMBOLS_MSG = (
    "Illegal characters found in parameter 'symbols'; legal range is "
    """'^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'."""
)


def get(fake: FakeBinance, path: str, **params: str) -> requests.Response:
    return get_within(fake, path, 5, **params)


def get_within(fake: FakeBinance, path: str, timeout: float, **params: str) -> requests.Response:
    return requests.get(fake.base_url + path, params=params, timeout=timeout)


def raw_get(fake: FakeBinance, target: str) -> tuple[int, bytes]:
    """A request with the target exactly as given: no client-side URL encoding."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- normal answers --------------------------------------------------------------------------


def test_ping_and_time(binance: FakeBinance) -> None:
    ping = get(binance, "/api/v3/ping")
    assert (ping.status_code, ping.json()) == (200, {})

    before = int(time.time() * 1000)
    server_time = get(binance, "/api/v3/time").json()["serverTime"]
    after = int(time.time() * 1000)
    assert before <= server_time <= after


def test_time_in_microseconds_when_asked(binance: FakeBinance) -> None:
    before = int(time.time() * 1_000_000)
    response = requests.get(
        binance.base_url + "/api/v3/time", headers={"X-MBX-TIME-UNIT": "MICROSECOND"}, timeout=5
    )
    assert before <= response.json()["serverTime"] <= int(time.time() * 1_000_000)


def test_default_prices() -> None:
    with FakeBinance() as fake:
        assert get(fake, TICKER).json() == [{"symbol": "BTCUSDT", "price": "43250.75000000"}]


def test_one_symbol_is_an_object_in_binance_compact_form(binance: FakeBinance) -> None:
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.text == '{"symbol":"BTCUSDT","price":"43250.75000000"}'


def test_symbols_come_back_in_the_requested_order(binance: FakeBinance) -> None:
    response = get(binance, TICKER, symbols='["ETHUSDT","BTCUSDT"]')
    assert "%5B%22ETHUSDT%22" in response.url  # really sent URL-encoded
    assert response.json() == [
        {"symbol": "ETHUSDT", "price": ETH},
        {"symbol": "BTCUSDT", "price": BTC},
    ]


def test_symbols_also_accepted_unencoded(binance: FakeBinance) -> None:
    status, body = raw_get(binance, TICKER + '?symbols=["ETHUSDT","BTCUSDT"]')
    assert status == 200
    assert [entry["symbol"] for entry in json.loads(body)] == ["ETHUSDT", "BTCUSDT"]


def test_no_symbol_lists_every_known_symbol(binance: FakeBinance) -> None:
    assert get(binance, TICKER).json() == [
        {"symbol": "BTCUSDT", "price": BTC},
        {"symbol": "ETHUSDT", "price": ETH},
    ]


def test_prices_can_change_while_running(binance: FakeBinance) -> None:
    binance.set_price("BTCUSDT", "44000.00000000")
    binance.prices["SOLUSDT"] = "101.50000000"
    assert get(binance, TICKER, symbol="BTCUSDT").json()["price"] == "44000.00000000"
    assert get(binance, TICKER, symbol="SOLUSDT").json()["price"] == "101.50000000"


# --- request errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"symbol": "DOGEBTC"}, {"symbols": '["BTCUSDT","DOGEBTC"]'}],
    ids=["symbol", "symbols"],
)
def test_unknown_symbol(binance: FakeBinance, params: dict[str, str]) -> None:
    response = get(binance, TICKER, **params)
    assert response.status_code == 400
    assert response.json() == {"code": -1121, "msg": "Invalid symbol."}


def test_symbol_and_symbols_together(binance: FakeBinance) -> None:
    response = get(binance, TICKER, symbol="BTCUSDT", symbols='["ETHUSDT"]')
    assert response.status_code == 400
    assert response.json()["code"] in (-1101, -1102)


@pytest.mark.parametrize(
    "symbols",
    ["BTCUSDT", '["BTCUSDT", "ETHUSDT"]', '["btcusdt"]', "[BTCUSDT]", '["BTCUSDT",]'],
    ids=["not-an-array", "space-after-comma", "lowercase", "unquoted", "trailing-comma"],
)
def test_malformed_symbols(binance: FakeBinance, symbols: str) -> None:
    response = get(binance, TICKER, symbols=symbols)
    assert response.status_code == 400
    assert response.json() == {"code": -1100, "msg": ILLEGAL_SYMBOLS_MSG}


def test_unknown_path_is_a_json_404(binance: FakeBinance) -> None:
    response = get(binance, "/api/v3/nothing")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == JSON_TYPE
    assert set(response.json()) == {"code", "msg"}


# --- weight ----------------------------------------------------------------------------------


def test_used_weight_accumulates_within_the_minute_and_resets_after(
    binance: FakeBinance,
) -> None:
    now = [600.0]  # a frozen clock, so a real minute boundary cannot fall mid-test
    binance.clock = lambda: now[0]

    def used_weight(path: str, **params: str) -> int:
        return int(get(binance, path, **params).headers["X-MBX-USED-WEIGHT-1M"])

    assert used_weight("/api/v3/ping") == 1
    assert used_weight("/api/v3/time") == 2
    assert used_weight(TICKER, symbol="BTCUSDT") == 4
    assert used_weight(TICKER, symbols='["BTCUSDT"]') == 8
    assert used_weight(TICKER) == 12
    now[0] = 660.0
    assert used_weight(TICKER, symbol="BTCUSDT") == 2


def test_faulted_answers_carry_the_weight_header_too(binance: FakeBinance) -> None:
    binance.fail_next(Fault.rate_limited())
    assert get(binance, TICKER, symbol="BTCUSDT").headers["X-MBX-USED-WEIGHT-1M"] == "2"


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        (Fault.rate_limited(retry_after=2), 429, -1003, "2"),
        (Fault.banned(retry_after=300), 418, -1003, "300"),
        (Fault.server_error(500), 500, -1001, None),
        (Fault.server_error(502), 502, -1001, None),
        (Fault.server_error(503), 503, -1008, None),
        (Fault.server_error(504), 504, -1007, None),
        (Fault.error(400, -1121, "Invalid symbol."), 400, -1121, None),
    ],
    ids=["429", "418", "500", "502", "503", "504", "custom-400"],
)
def test_error_faults(
    binance: FakeBinance, fault: Fault, status: int, code: int, retry_after: str | None
) -> None:
    binance.fail_next(fault)
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == status
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers.get("Retry-After") == retry_after
    assert response.json()["code"] == code
    assert response.json()["msg"]


def test_restricted_location_body_is_binances_verbatim(binance: FakeBinance) -> None:
    binance.fail_next(Fault.restricted_location())
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == 451
    assert response.text == RESTRICTED_LOCATION_BODY
    assert response.json() == {
        "code": 0,
        "msg": "Service unavailable from a restricted location according to 'b. Eligibility' "
        "in https://www.binance.com/en/terms. Please contact customer service if you believe "
        "you received this message in error.",
    }


def test_faults_apply_one_per_ticker_request_in_order(binance: FakeBinance) -> None:
    binance.fail_next(Fault.rate_limited(), Fault.server_error(503))
    assert get(binance, "/api/v3/ping").status_code == 200  # not a ticker request: no fault
    statuses = [get(binance, TICKER, symbol="BTCUSDT").status_code for _ in range(3)]
    assert statuses == [429, 503, 200]
    assert [r.status for r in binance.ticker_requests()] == [429, 503, 200]


def test_invalid_json_fault(binance: FakeBinance) -> None:
    binance.fail_next(Fault.invalid_json())
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.text == '{"symbol":"BTCUSDT","pri'
    with pytest.raises(ValueError):
        response.json()


def test_html_page_fault(binance: FakeBinance) -> None:
    binance.fail_next(Fault.html_page())
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>")


@pytest.mark.parametrize("value", ["0.00000000", "-1.5", "NaN", "abc", "", 43250.75, None])
def test_bad_price_for_a_single_symbol(binance: FakeBinance, value: object) -> None:
    binance.fail_next(Fault.bad_price(value))
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert response.status_code == 200
    assert response.json() == {"symbol": "BTCUSDT", "price": value}


def test_missing_price(binance: FakeBinance) -> None:
    binance.fail_next(Fault.missing_price())
    assert get(binance, TICKER, symbol="BTCUSDT").json() == {"symbol": "BTCUSDT"}
    assert Fault.missing_price() == Fault.bad_price(MISSING)


def test_bad_price_can_hit_one_symbol_of_many(binance: FakeBinance) -> None:
    binance.fail_next(Fault.bad_price("-1.5", symbol="ETHUSDT"), Fault.missing_price("BTCUSDT"))
    assert get(binance, TICKER).json() == [
        {"symbol": "BTCUSDT", "price": BTC},
        {"symbol": "ETHUSDT", "price": "-1.5"},
    ]
    assert get(binance, TICKER).json() == [
        {"symbol": "BTCUSDT"},
        {"symbol": "ETHUSDT", "price": ETH},
    ]


def test_dropped_connection(binance: FakeBinance) -> None:
    binance.fail_next(Fault.drop())
    with pytest.raises(requests.ConnectionError):
        get(binance, TICKER, symbol="BTCUSDT")
    assert binance.ticker_requests()[0].status is None
    assert get(binance, TICKER, symbol="BTCUSDT").status_code == 200


def test_slow_answer_arrives_late_but_normal(binance: FakeBinance) -> None:
    binance.fail_next(Fault.slow(0.3))
    started = time.monotonic()
    response = get(binance, TICKER, symbol="BTCUSDT")
    assert time.monotonic() - started >= 0.3
    assert response.json() == {"symbol": "BTCUSDT", "price": BTC}


def test_slow_answer_trips_client_timeout_while_others_are_served(binance: FakeBinance) -> None:
    binance.fail_next(Fault.slow(30))
    outcome: list[BaseException] = []

    def slow_client() -> None:
        try:
            get_within(binance, TICKER, 0.5, symbol="BTCUSDT")
        except requests.Timeout as error:
            outcome.append(error)

    thread = threading.Thread(target=slow_client)
    thread.start()
    binance.wait_for_requests(1, timeout=5)
    assert get(binance, TICKER, symbol="ETHUSDT").json()["price"] == ETH
    assert binance.ticker_requests()[0].status is None  # the slow one is still waiting
    thread.join(5)
    assert len(outcome) == 1


def test_stop_cuts_a_slow_answer_short(capfd: pytest.CaptureFixture[str]) -> None:
    fake = FakeBinance().start()
    fake.fail_next(Fault.slow(30))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            get_within(fake, TICKER, 10, symbol="BTCUSDT")
        except requests.RequestException as error:
            errors.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    fake.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert len(errors) == 1  # the client saw the server go away, not a late answer
    assert capfd.readouterr().err == ""


# --- recording -------------------------------------------------------------------------------


def test_requests_are_recorded(binance: FakeBinance) -> None:
    binance.fail_next(Fault.rate_limited())
    before_wall, before_mono = time.time(), time.monotonic()
    get(binance, "/api/v3/ping")
    requests.get(
        binance.base_url + TICKER,
        params={"symbol": "BTCUSDT"},
        headers={"User-Agent": "producer-test"},
        timeout=5,
    )
    get(binance, TICKER, symbols='["ETHUSDT"]')

    ping, first, second = binance.requests
    assert (ping.path, ping.status) == ("/api/v3/ping", 200)
    assert binance.ticker_requests() == [first, second]
    assert (first.query, first.status) == ({"symbol": "BTCUSDT"}, 429)
    assert first.headers["User-Agent"] == "producer-test"
    assert (second.query, second.status) == ({"symbols": '["ETHUSDT"]'}, 200)
    assert before_mono <= ping.monotonic <= first.monotonic <= second.monotonic
    assert before_wall <= first.wall <= time.time()


def test_wait_for_requests_returns_the_first_n(binance: FakeBinance) -> None:
    def poll_three_times() -> None:
        for symbol in ("BTCUSDT", "ETHUSDT", "BTCUSDT"):
            get(binance, TICKER, symbol=symbol)

    threading.Thread(target=poll_three_times).start()
    first, second = binance.wait_for_requests(2, timeout=5)
    assert [first.query["symbol"], second.query["symbol"]] == ["BTCUSDT", "ETHUSDT"]
    wait_until(lambda: len(binance.ticker_requests()) == 3, 5, "the third request")


def test_wait_for_requests_times_out(binance: FakeBinance) -> None:
    get(binance, "/api/v3/ping")  # not a ticker request: does not count
    with pytest.raises(TimeoutError):
        binance.wait_for_requests(1, timeout=0.2)


# --- lifecycle -------------------------------------------------------------------------------


def test_context_exit_stops_and_frees_the_port() -> None:
    with requests.Session() as session:  # a pooled keep-alive connection must not outlive stop()
        with FakeBinance() as fake:
            assert session.get(fake.base_url + "/api/v3/ping", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            session.get(fake.base_url + "/api/v3/ping", timeout=5)
    with socket.socket() as sock:
        # SO_REUSEADDR as a restarted server would: only tolerates TIME_WAIT, not a listener
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", fake.port))
        sock.listen()


def test_restart_on_the_same_url(binance: FakeBinance) -> None:
    binance.stop()
    with pytest.raises(requests.ConnectionError):
        get(binance, "/api/v3/ping")
    binance.start()
    assert get(binance, "/api/v3/ping").status_code == 200
    assert [r.status for r in binance.requests] == [200]


def test_binds_loopback_only(binance: FakeBinance) -> None:
    assert binance.base_url == f"http://127.0.0.1:{binance.port}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # sends nothing: only picks the outward interface
            outward = probe.getsockname()[0]
    except OSError:
        outward = "127.0.0.1"
    if outward.startswith("127."):
        pytest.skip("no non-loopback interface to probe")
    with pytest.raises(OSError):
        socket.create_connection((outward, binance.port), timeout=1).close()


def test_quiet(binance: FakeBinance, capfd: pytest.CaptureFixture[str]) -> None:
    binance.fail_next(Fault.slow(0.5))
    with pytest.raises(requests.Timeout):
        get_within(binance, TICKER, 0.1, symbol="BTCUSDT")  # hangs up on the server
    get(binance, "/api/v3/nothing")
    get(binance, TICKER, symbol="BTCUSDT")
    wait_until(lambda: binance.ticker_requests()[0].status == 200, 5, "the late answer")
    binance.stop()  # joins the handler threads, so anything they would print is out by now
    assert capfd.readouterr().err == ""
