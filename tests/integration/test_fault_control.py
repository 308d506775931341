"""Breaking things by hand: the fake Binance's control endpoint over real HTTP, and
`python -m tests.harness` printing what a person needs to queue faults and freeze servers."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
import requests

from tests.harness import FakeBinance
from tests.harness.fake_binance import RESTRICTED_LOCATION_BODY
from tests.producer_runs import BTC  # the price of the `binance` fixture

ROOT = Path(__file__).resolve().parents[2]
TICKER = "/api/v3/ticker/price"


def control(fake: FakeBinance, method: str, route: str, **params: str) -> requests.Response:
    return requests.request(method, f"{fake.base_url}/_harness{route}", params=params, timeout=5)


def ticker(fake: FakeBinance, timeout: float = 5) -> requests.Response:
    return requests.get(fake.base_url + TICKER, params={"symbol": "BTCUSDT"}, timeout=timeout)


def is_price(value: str) -> Callable[[requests.Response], bool]:
    return lambda r: r.status_code == 200 and r.json() == {"symbol": "BTCUSDT", "price": value}


# (query of POST /_harness/faults, what the next ticker/price answer must look like)
KINDS = [
    ({"kind": "restricted"}, lambda r: (r.status_code, r.text) == (451, RESTRICTED_LOCATION_BODY)),
    (
        {"kind": "rate-limited", "retry_after": "7"},
        lambda r: (r.status_code, r.headers["Retry-After"], r.json()["code"]) == (429, "7", -1003),
    ),
    (
        {"kind": "banned"},
        lambda r: (
            (r.status_code, r.headers["Retry-After"]) == (418, "120")
            and "banned until" in r.json()["msg"]
        ),
    ),
    ({"kind": "server-error"}, lambda r: (r.status_code, r.json()["code"]) == (500, -1001)),
    (
        {"kind": "server-error", "status": "503"},
        lambda r: (r.status_code, r.json()["code"]) == (503, -1008),
    ),
    ({"kind": "slow", "seconds": "0.3"}, lambda r: r.elapsed.total_seconds() >= 0.3),
    (
        {"kind": "invalid-json"},
        lambda r: r.status_code == 200 and r.text == '{"symbol":"BTCUSDT","pri',
    ),
    ({"kind": "html"}, lambda r: r.status_code == 200 and r.text.startswith("<html>")),
    ({"kind": "bad-price", "value": "1e5"}, is_price("1e5")),
    ({"kind": "bad-price"}, is_price("-1")),
    ({"kind": "missing-price"}, lambda r: r.json() == {"symbol": "BTCUSDT"}),
]


@pytest.mark.parametrize(("query", "looks_right"), KINDS, ids=[str(q) for q, _ in KINDS])
def test_each_fault_kind_answers_the_next_ticker_request_then_normal_again(
    binance: FakeBinance, query: dict[str, str], looks_right: Callable[[requests.Response], bool]
) -> None:
    queued = control(binance, "POST", "/faults", **query)
    assert queued.status_code == 200, queued.text
    assert queued.json() == {"queued": 1, "added": 1, "kind": query["kind"]}
    assert looks_right(ticker(binance))
    assert is_price(BTC)(ticker(binance))


def test_a_dropped_connection(binance: FakeBinance) -> None:
    control(binance, "POST", "/faults", kind="drop")
    with pytest.raises(requests.ConnectionError):
        ticker(binance)
    assert is_price(BTC)(ticker(binance))


def test_count_queues_a_fault_that_many_times_and_delete_clears_them(binance: FakeBinance) -> None:
    control(binance, "POST", "/faults", kind="server-error", status="502", count="3")
    control(binance, "POST", "/faults", kind="rate-limited", retry_after="1")
    listed = control(binance, "GET", "/faults").json()["queued"]
    assert [fault["status"] for fault in listed] == [502, 502, 502, 429]
    assert listed[3]["retry_after"] == 1
    assert [ticker(binance).status_code for _ in range(2)] == [502, 502]
    assert control(binance, "DELETE", "/faults").json() == {"cleared": 2}
    assert is_price(BTC)(ticker(binance))
    assert control(binance, "GET", "/faults").json() == {"queued": []}


def test_control_requests_are_not_ticker_requests(binance: FakeBinance) -> None:
    control(binance, "GET", "")
    control(binance, "POST", "/faults", kind="restricted")
    assert binance.requests == []
    assert ticker(binance).status_code == 451  # the GET /_harness did not use the fault up


def test_prices_can_be_set(binance: FakeBinance) -> None:
    assert control(binance, "POST", "/prices", symbol="BTCUSDT", price="44000.5").status_code == 200
    assert is_price("44000.5")(ticker(binance))


def test_the_index_lists_every_kind_with_its_parameters(binance: FakeBinance) -> None:
    index = control(binance, "GET", "").json()
    assert {query["kind"] for query, _ in KINDS} | {"drop"} == set(index["kinds"])
    assert "retry_after" in index["kinds"]["rate-limited"]["parameters"]
    assert any(endpoint.startswith("DELETE /_harness/faults") for endpoint in index["endpoints"])


@pytest.mark.parametrize(
    ("method", "route", "params", "words"),
    [
        ("POST", "/faults", {"kind": "meteor"}, "kind must be one of restricted, rate-limited"),
        ("POST", "/faults", {}, "kind must be one of"),
        ("POST", "/faults", {"kind": "drop", "count": "0"}, "count must be a whole number from 1"),
        ("POST", "/faults", {"kind": "server-error", "status": "404"}, "status must be"),
        ("POST", "/faults", {"kind": "server-error", "status": "501"}, "status must be one of"),
        ("POST", "/faults", {"kind": "rate-limited", "retry_after": "soon"}, "retry_after must"),
        ("POST", "/faults", {"kind": "slow", "seconds": "-1"}, "seconds must be"),
        ("POST", "/faults", {"kind": "drop", "status": "500"}, "drop takes no parameter status"),
        ("POST", "/prices", {"symbol": "BTCUSDT"}, "give symbol and price"),
        ("PUT", "/faults", {}, None),
        ("GET", "/nothing", {}, "no control endpoint GET /_harness/nothing"),
    ],
)
def test_a_bad_control_request_is_a_400_saying_why_and_changes_nothing(
    binance: FakeBinance, method: str, route: str, params: dict[str, str], words: str | None
) -> None:
    answer = control(binance, method, route, **params)
    if words is None:  # a method the server does not speak at all
        assert answer.status_code == 501
    else:
        assert answer.status_code == 400
        assert words in answer.json()["error"]
    assert control(binance, "GET", "/faults").json() == {"queued": []}
    assert is_price(BTC)(ticker(binance))


# --- python -m tests.harness -------------------------------------------------------------------


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The harness as a person runs it: its environment file and what it printed."""
    env_file = tmp_path / "pipeline.env"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness", "--env-file", str(env_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ends when the harness is ready (or has died)
            printed.append(line)
            if line.startswith("# Harness running"):
                break
        assert printed and printed[-1].startswith("# Harness running"), "".join(printed)
        exported = {}
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            exported[key] = value
        yield exported, "".join(printed)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0


def test_the_harness_prints_the_control_url_and_how_to_freeze_each_server(harness) -> None:
    env, printed = harness
    control_url, broker, postgres = (
        env["HARNESS_CONTROL_URL"],
        env["HARNESS_BROKER_PID"],
        env["HARNESS_POSTGRES_PID"],
    )
    assert control_url == env["BINANCE_BASE_URL"] + "/_harness"
    assert f"curl -X POST '{control_url}/faults?kind=rate-limited&retry_after=5'" in printed
    assert f"kill -STOP {broker}" in printed and f"kill -CONT {broker}" in printed
    assert f"kill -STOP {postgres} && pkill -STOP -P {postgres}" in printed
    assert b"tansu" in Path(f"/proc/{broker}/cmdline").read_bytes()
    assert Path(f"/proc/{postgres}/comm").read_text().strip() == "postgres"

    queued = requests.post(f"{control_url}/faults", params={"kind": "restricted"}, timeout=5)
    assert queued.status_code == 200
    answer = requests.get(env["BINANCE_BASE_URL"] + TICKER, timeout=5)
    assert answer.status_code == 451


def test_the_printed_commands_freeze_and_thaw_postgresql(harness) -> None:
    env, printed = harness
    pid = env["HARNESS_POSTGRES_PID"]
    dsn = (
        f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} dbname={env['POSTGRES_DB']} "
        f"user={env['POSTGRES_USER']} password={env['POSTGRES_PASSWORD']} connect_timeout=2"
    )
    held = psycopg2.connect(dsn)  # a connection opened before the freeze, like the consumer's
    held.autocommit = True
    freeze = f"kill -STOP {pid} && pkill -STOP -P {pid}"
    thaw = f"pkill -CONT -P {pid}; kill -CONT {pid}"
    assert freeze in printed and thaw in printed
    subprocess.run(freeze, shell=True, check=True)
    try:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(dsn)  # a new connection is not answered (connect_timeout)
        assert process_states(pid) == {"T"}  # the postmaster and every child are stopped
    finally:
        subprocess.run(thaw, shell=True, check=True)
    with held.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    held.close()
    psycopg2.connect(dsn).close()


def process_states(pid: str) -> set[str]:
    """The states (R, S, T...) of a process and of its children."""
    children = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
    states = set()
    for each in [pid, *children]:
        stat = Path(f"/proc/{each}/stat").read_text()
        states.add(stat.rsplit(")", 1)[1].split()[0])
    return states
