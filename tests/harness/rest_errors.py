"""Binance's REST error answers: a status and the `{"code": ..., "msg": ...}` body, with the
messages of Binance's errors.md for the requests the fake Binance checks."""

from __future__ import annotations

import json
from typing import Any

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


class BinanceError(Exception):
    """An answer Binance gives a request it refuses."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg

    @property
    def body(self) -> str:
        return error_body(self.code, self.msg)


def error_body(code: int, msg: str) -> str:
    return compact_json({"code": code, "msg": msg})


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))  # compact, as Binance sends it


def bad_request(code: int, msg: str) -> BinanceError:
    return BinanceError(400, code, msg)


def mandatory_missing(parameter: str) -> BinanceError:
    msg = f"Mandatory parameter '{parameter}' was not sent, was empty/null, or malformed."
    return bad_request(-1102, msg)


def illegal_characters(parameter: str, pattern: str) -> BinanceError:
    msg = f"Illegal characters found in parameter '{parameter}'; legal range is '{pattern}'."
    return bad_request(-1100, msg)


def invalid_value(parameter: str) -> BinanceError:
    return bad_request(-1130, f"Data sent for parameter '{parameter}' is not valid.")


def unread_parameters(read: int, sent: int) -> BinanceError:
    msg = f"Not all sent parameters were read; read '{read}' parameter(s) but was sent '{sent}'."
    return bad_request(-1104, msg)


INVALID_SYMBOL = (-1121, "Invalid symbol.")


def invalid_symbol() -> BinanceError:
    return bad_request(*INVALID_SYMBOL)
