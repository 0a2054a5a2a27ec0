"""The HTTP error table: a server-named delay is always one the engine can add to a date; TLS only."""
from __future__ import annotations

import datetime as dt
import email.utils
import time

import pytest
import requests
import responses

from connector import http
from connector.errors import ConfigError, RetryableError

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(time.time() + seconds_from_now, dt.timezone.utc),
                                       usegmt=True)


@pytest.mark.parametrize("value, delay", [
    ("7", 7.0),
    ("1e12", http.MAX_DELAY),
    ("inf", http.MAX_DELAY),
    ("Infinity", http.MAX_DELAY),
    ("9" * 400, http.MAX_DELAY),
    ("nan", 30.0),
    ("-5", 0.0),
    ("-inf", 0.0),
    ("soon", 30.0),
    ("", 30.0),
    (None, 30.0),
    ({"seconds": 5}, 30.0),            # a Graph $batch sub-response header is whatever JSON the body had
    (10**400, http.MAX_DELAY),         # an integer no float can hold
    (True, 30.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", http.MAX_DELAY),
    ("Mon, 01 Jan 1990 00:00:00 GMT", 0.0),
], ids=lambda v: repr(v)[:24])
def test_retry_after_is_bounded_and_never_raises(value, delay):
    assert http.parse_retry_after(value) == delay


def test_retry_after_as_a_near_http_date():
    assert 100 <= http.parse_retry_after(http_date(120)) <= 120


@pytest.mark.parametrize("delay", [1e12, float("inf"), float("nan"), -1.0, 1e308])
@pytest.mark.parametrize("status", sorted(http.RETRYABLE))
def test_the_table_gives_a_delay_the_engine_can_park(status, delay):
    err = http.error_for(status, "busy", "graph", delay)
    assert isinstance(err, RetryableError) and 0.0 <= err.delay <= http.MAX_DELAY
    assert NOW + dt.timedelta(seconds=err.delay) > NOW - dt.timedelta(seconds=1)      # no OverflowError


@responses.activate
def test_a_long_retry_after_surfaces_capped_instead_of_blocking(monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    responses.get("https://api.example/x", status=429, headers={"Retry-After": "1e12"})
    with pytest.raises(RetryableError) as e:
        http.send(http.session(), "GET", "https://api.example/x", "example")
    assert (e.value.delay, slept, len(responses.calls)) == (http.MAX_DELAY, [], 1)


@pytest.mark.parametrize("url", ["http://contoso.bamboohr.com/api/v1/x", "ftp://files.example/x",
                                 "http://127.0.0.1.nip.io/x", "HTTP://[::ffff:10.0.0.1]/x"])
def test_credentials_never_go_to_another_machine_over_plain_http(url):
    with responses.RequestsMock() as rsps:       # no request registered: any request would fail the test
        with pytest.raises(ConfigError, match="only over https"):
            http.send(http.session(), "GET", url, "src", auth=("key", "x"))
        assert len(rsps.calls) == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443/x", "http://localhost/x", "http://[::1]:9/x",
                                 "https://contoso.bamboohr.com/x"])
def test_loopback_and_https_are_sent(url):
    with responses.RequestsMock() as rsps:
        rsps.get(url, json={})
        assert http.send(http.session(), "GET", url, "src").status_code == 200


def test_connection_errors_stay_retryable():
    with responses.RequestsMock() as rsps:
        rsps.get("https://down.example/x", body=requests.ConnectionError("refused"))
        with pytest.raises(RetryableError):
            http.send(http.session(), "GET", "https://down.example/x", "src", attempts=1)
