"""Breaking things by hand: the fake Binance's control endpoint over real HTTP, and
`python -m tests.harness` printing what a person needs to queue faults and freeze servers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import requests
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness import FakeBinance, free_port, wait_until
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
            and re.fullmatch(
                r"Way too much request weight used; IP banned until \d{13}\. "
                r"Please use the websocket for live updates to avoid bans\.",
                r.json()["msg"],
            )
            is not None
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
    assert queued.json() == {
        "queued": 1, "added": 1, "kind": query["kind"], "path": "/api/v3/ticker/price"
    }  # fmt: skip
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
    control(binance, "POST", "/faults", kind="banned", path="klines")
    listed = control(binance, "GET", "/faults").json()["queued"]
    assert [fault["status"] for fault in listed] == [502, 502, 502, 429, 418]
    assert listed[3]["retry_after"] == 1
    assert [fault["path"] for fault in listed] == [TICKER] * 4 + ["/api/v3/klines"]
    assert [ticker(binance).status_code for _ in range(2)] == [502, 502]
    assert control(binance, "DELETE", "/faults").json() == {"cleared": 3}
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


def test_a_symbol_can_be_delisted(binance: FakeBinance) -> None:
    assert control(binance, "DELETE", "/prices", symbol="BTCUSDT").json() == {"delisted": "BTCUSDT"}
    answer = ticker(binance)
    assert (answer.status_code, answer.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
    again = control(binance, "DELETE", "/prices", symbol="BTCUSDT")
    assert (again.status_code, again.json()) == (400, {"error": "BTCUSDT is not listed"})


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
        ("POST", "/faults", {"kind": "drop", "path": "depth"}, "path must be one of ticker/price"),
        ("POST", "/faults", {"kind": "bad-price", "path": "klines"}, "only applies to ticker"),
        ("POST", "/trades", {"symbol": "btc"}, "symbol must be a Binance symbol"),
        ("POST", "/trades", {"symbol": "BTCUSDT", "count": "0"}, "count must be a whole"),
        ("POST", "/gap", {"symbol": "DOGEUSDT"}, "DOGEUSDT has no trade tape"),
        ("POST", "/placeholder", {"symbol": "DOGEUSDT"}, "DOGEUSDT has no trade tape"),
        ("POST", "/trade-rate", {"symbol": "BTCUSDT", "per_second": "fast"}, "per_second must"),
        ("POST", "/streams/stall", {"seconds": "-5"}, "seconds must be"),
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


def test_trades_by_hand_by_count_and_by_body(binance: FakeBinance) -> None:
    added = control(binance, "POST", "/trades", symbol="SOLUSDT", count="5").json()
    assert added == {"symbol": "SOLUSDT", "added": 5, "first_id": 1, "last_id": 5}
    body: list[dict[str, Any]] = [
        {"p": "101.5", "q": "2", "m": True, "n": 3}, {"p": "101.25", "q": "0.5"},
    ]  # fmt: skip
    given = requests.post(
        f"{binance.base_url}/_harness/trades", params={"symbol": "SOLUSDT"}, json=body, timeout=5
    )
    assert given.json() == {"symbol": "SOLUSDT", "added": 2, "first_id": 6, "last_id": 7}
    served = requests.get(
        binance.base_url + "/api/v3/aggTrades", params={"symbol": "SOLUSDT"}, timeout=5
    ).json()
    assert [(r["a"], r["p"], r["m"], r["l"] - r["f"] + 1) for r in served[-2:]] == [
        (6, "101.50000000", True, 3), (7, "101.25000000", False, 1),
    ]  # fmt: skip
    summary = control(binance, "GET", "/trades", symbol="SOLUSDT").json()
    assert (summary["trades"], summary["last_id"], summary["last_price"]) == (7, 7, "101.25000000")
    bad = requests.post(
        f"{binance.base_url}/_harness/trades", params={"symbol": "SOLUSDT"},
        json=[{"p": "0", "q": "1"}], timeout=5,
    )  # fmt: skip
    assert bad.status_code == 400 and "above 0" in bad.json()["error"]


def test_a_gap_a_placeholder_and_a_rate_by_hand(binance: FakeBinance) -> None:
    control(binance, "POST", "/trades", symbol="SOLUSDT", count="2")
    gap = control(binance, "POST", "/gap", symbol="SOLUSDT", ids="3").json()
    assert gap == {"symbol": "SOLUSDT", "missing_from": 3, "missing_to": 5}
    placeholder = control(binance, "POST", "/placeholder", symbol="SOLUSDT").json()["placeholder"]
    assert (placeholder["a"], placeholder["p"], placeholder["f"], placeholder["l"]) == (
        6, "0.00000000", -1, -1,
    )  # fmt: skip
    rate = control(binance, "POST", "/trade-rate", symbol="SOLUSDT", per_second="200")
    assert rate.json() == {"symbol": "SOLUSDT", "trades_per_second": 200.0}
    wait_until(lambda: len(binance.trades("SOLUSDT")) > 20, 20, "the walk's trades")
    ids = [t.agg_id for t in binance.trades("SOLUSDT")]
    assert ids[:4] == [1, 2, 6, 7] and ids == sorted(set(ids))


def test_stream_faults_by_hand(binance: FakeBinance) -> None:
    with connect(binance.ws_url + "/ws/btcusdt@aggTrade") as ws:
        wait_until(lambda: binance.stream_connections(), 10, "the WebSocket")
        (listed,) = control(binance, "GET", "/streams").json()["connections"]
        assert (listed["path"], listed["streams"]) == ("/ws/btcusdt@aggTrade", ["btcusdt@aggTrade"])
        notice = control(binance, "POST", "/streams/shutdown-notice").json()
        assert notice == {"notified": 1, "close_after": None}
        assert json.loads(ws.recv(timeout=10))["e"] == "serverShutdown"
        assert control(binance, "POST", "/streams/stall", seconds="0.2").json() == {
            "stalled": 1, "seconds": 0.2,
        }  # fmt: skip
        assert control(binance, "POST", "/streams/cut").json() == {"cut": 1}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


# --- python -m tests.harness -------------------------------------------------------------------


class Harness:
    """`python -m tests.harness` as a person runs it, its output collected as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.env_file = tmp_path / "pipeline.env"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness", "--env-file", str(self.env_file), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def printed(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, start: str, timeout: float = 90) -> str:
        def found() -> str | None:
            line = next((line for line in self.lines if line.startswith(start)), None)
            if line is None and self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"the harness exited first:\n{self.printed}")
            return line

        return wait_until(found, timeout, f"the harness to print {start!r}")

    def ready(self) -> dict[str, str]:
        self.wait_for_line("# Harness running")
        return self.env()

    def env(self) -> dict[str, str]:
        exported = {}
        for line in self.env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            exported[key] = shlex.split(value)[0]
        return exported

    def exit_code(self) -> int:
        """Its exit code once it has ended by itself."""
        code = self.process.wait(60)
        self._reader.join(10)
        return code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        self._reader.join(10)
        return code


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The harness as a person runs it: its environment file and what it printed."""
    running = Harness(tmp_path)
    try:
        env = running.ready()
        yield env, running.printed
    finally:
        assert running.stop() == 0


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


def test_the_env_file_holds_the_websocket_url_and_a_psql_command_that_works(harness) -> None:
    env, printed = harness
    assert env["BINANCE_WS_URL"].startswith("ws://127.0.0.1:")
    with connect(env["BINANCE_WS_URL"] + "/ws/btcusdt@aggTrade") as ws:
        event = json.loads(ws.recv(timeout=20))  # the harness's walk trades by itself
    assert (event["e"], event["s"]) == ("aggTrade", "BTCUSDT")
    ticker = requests.get(env["BINANCE_BASE_URL"] + TICKER, params={"symbol": "BTCUSDT"}, timeout=5)
    assert ticker.json()["price"] != ""  # the tape's last price
    assert f"# psql: {env['HARNESS_PSQL']}" in printed
    assert f"kill -USR1 {env['HARNESS_PID']}" in printed
    for command in ("/streams/cut", "/streams/stall?seconds=30", "/gap?symbol=BTCUSDT&ids=10"):
        assert f"{env['HARNESS_CONTROL_URL']}{command}" in printed
    psql = shlex.split(env["HARNESS_PSQL"])
    if not Path(psql[0]).is_file() and subprocess.run(["which", psql[0]]).returncode:
        pytest.skip(f"no {psql[0]} on this machine")
    answer = subprocess.run(
        [*psql, "-tAc", "SELECT current_database()"], capture_output=True, text=True
    )
    assert answer.stdout.strip() == "eventsdb", answer.stderr


def test_fixed_ports(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    harness = Harness(
        tmp_path,
        *("--kafka-port", str(ports[0]), "--postgres-port", str(ports[1])),
        *("--binance-port", str(ports[2]), "--binance-ws-port", str(ports[3])),
    )
    try:
        env = harness.ready()
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{ports[0]}"
        assert env["POSTGRES_PORT"] == str(ports[1])
        assert env["BINANCE_BASE_URL"] == f"http://127.0.0.1:{ports[2]}"
        assert env["BINANCE_WS_URL"] == f"ws://127.0.0.1:{ports[3]}"
    finally:
        assert harness.stop() == 0


def test_a_data_dir_keeps_postgresql_data_across_runs(tmp_path: Path) -> None:
    # As root the cluster is the postgres user's, who must reach the folder: pytest's own
    # temporary folders are root's only.
    reachable = Path(tempfile.mkdtemp(prefix="harness-data-"))
    reachable.chmod(0o755)
    try:
        keeps_data_across_runs(tmp_path, reachable / "pgdata")
    finally:
        shutil.rmtree(reachable)


def keeps_data_across_runs(tmp_path: Path, data: Path) -> None:
    for run in (1, 2):
        harness = Harness(tmp_path, "--data-dir", str(data))
        try:
            env = harness.ready()
            conn = psycopg2.connect(dsn_of(env))
            conn.autocommit = True
            with conn.cursor() as cur:
                if run == 1:
                    cur.execute("CREATE TABLE kept (note text)")
                    cur.execute("INSERT INTO kept VALUES (%(note)s)", {"note": "first run"})
                cur.execute("SELECT note FROM kept")
                assert cur.fetchall() == [("first run",)]
            conn.close()
        finally:
            assert harness.stop() == 0
    assert (data / "data" / "PG_VERSION").is_file()


def test_a_data_dir_holding_something_else_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("not a cluster")
    harness = Harness(tmp_path, "--data-dir", str(other))
    assert harness.exit_code() == 2
    assert "is neither empty nor a PostgreSQL folder of the harness" in harness.printed
    assert (other / "todo.txt").read_text() == "not a cluster"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--kafka-port", "70000"], "HARNESS_KAFKA_PORT (--kafka-port) must be a port number"),
        (["--trades-per-second", "-1"], "HARNESS_TRADES_PER_SECOND (--trades-per-second) must be"),
    ],
)
def test_a_bad_setting_is_one_sentence_and_exit_2(
    tmp_path: Path, args: list[str], said: str
) -> None:
    harness = Harness(tmp_path, *args)
    assert harness.exit_code() == 2
    assert harness.printed.startswith(f"python -m tests.harness: error: {said}")
    assert harness.printed.count("\n") == 1


def test_the_harness_stops_everything_when_its_broker_dies(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    env = harness.ready()
    os.kill(int(env["HARNESS_BROKER_PID"]), signal.SIGKILL)
    assert harness.process.wait(60) == 1
    line = harness.wait_for_line("python -m tests.harness: the Kafka broker")
    assert "exited with code -9; stopping everything. Log: " in line
    postgres = int(env["HARNESS_POSTGRES_PID"])
    wait_until(lambda: not Path(f"/proc/{postgres}").exists(), 30, "PostgreSQL to be stopped")
    harness.stop()


def test_sigusr1_replaces_the_broker_by_an_empty_one_on_the_same_port(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    try:
        env = harness.ready()
        bootstrap, old_pid = env["KAFKA_BOOTSTRAP_SERVERS"], env["HARNESS_BROKER_PID"]
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        admin.create_topics([NewTopic("before_the_loss", 1, 1)])
        assert "before_the_loss" in admin.list_topics()
        admin.close()
        harness.process.send_signal(signal.SIGUSR1)
        replaced = harness.wait_for_line("# Broker replaced by an empty one")
        new = harness.env()
        assert new["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
        assert (
            new["HARNESS_BROKER_PID"] != old_pid and f"pid {new['HARNESS_BROKER_PID']}" in replaced
        )
        assert (
            not Path(f"/proc/{old_pid}/cmdline").exists()
            or b"tansu" not in Path(f"/proc/{old_pid}/cmdline").read_bytes()
        )
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        assert "before_the_loss" not in admin.list_topics()
        admin.close()
    finally:
        assert harness.stop() == 0


def dsn_of(env: dict[str, str]) -> str:
    return (
        f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} dbname={env['POSTGRES_DB']} "
        f"user={env['POSTGRES_USER']} password={env['POSTGRES_PASSWORD']} connect_timeout=5"
    )
