"""The client address behind reverse proxies, and the source allow-list: spoofed chains believe nobody."""
import ipaddress

import pytest

from connector.net import allowed, client_address, parse_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize("remote, xff, client", [
    ("203.0.113.7", None, "203.0.113.7"),                              # no proxy at all
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),                    # an untrusted peer's header is ignored
    ("10.0.0.2", None, "10.0.0.2"),                                    # a proxy that says nothing is the client
    ("10.0.0.2", "198.51.100.1", "198.51.100.1"),                      # one proxy
    ("10.0.0.2", "198.51.100.1, 10.1.1.1", "198.51.100.1"),           # two proxies
    ("10.0.0.2", "1.2.3.4, 198.51.100.1", "198.51.100.1"),            # the client's own claim is left of its hop
    ("10.0.0.2", "10.9.9.9, 198.51.100.1", "198.51.100.1"),           # a spoofed trusted address on the left
    ("10.0.0.2", "127.0.0.1,198.51.100.1", "198.51.100.1"),           # spoofing loopback gets nowhere
    ("10.0.0.2", "10.5.5.5, 10.6.6.6", "10.5.5.5"),                   # every hop trusted: the farthest one
    ("10.0.0.2", "198.51.100.1:4711", "198.51.100.1"),                # a port after the address
    ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
    ("10.0.0.2", "unknown, 198.51.100.1", "198.51.100.1"),
    ("10.0.0.2", "198.51.100.1, garbage", "10.0.0.2"),                 # a proxy that vouches for nonsense: itself
    ("10.0.0.2", "", "10.0.0.2"),
    ("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1"),              # IPv4-mapped peer is the IPv4 proxy
    ("::1", "2001:db8::7", "2001:db8::7"),
])
def test_client_address(remote, xff, client):
    assert client_address(remote, xff, PROXIES) == client


def test_without_trusted_proxies_the_header_is_never_believed():
    assert client_address("127.0.0.1", "198.51.100.1", []) == "127.0.0.1"


def test_several_headers_joined_by_the_server_read_as_one_chain():
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.1,10.0.0.3", PROXIES) == "198.51.100.1"


@pytest.mark.parametrize("addr, ok", [("192.0.2.10", True), ("192.0.2.300", False), ("198.51.100.9", False),
                                      ("::ffff:192.0.2.10", True), ("2001:db8::5", True), ("not-an-ip", False),
                                      ("", False)])
def test_allow_list(addr, ok):
    networks = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]
    assert allowed(addr, networks) is ok


def test_an_empty_allow_list_lets_everyone_in():
    assert allowed("198.51.100.9", []) and allowed("::1", [])


def test_a_spoofed_header_cannot_pass_the_allow_list():
    allow = [ipaddress.ip_network("192.0.2.0/24")]
    spoofed = client_address("203.0.113.50", "192.0.2.10", PROXIES)    # straight from the internet
    assert not allowed(spoofed, allow)
    via_proxy = client_address("10.0.0.2", "192.0.2.10, 203.0.113.50", PROXIES)
    assert via_proxy == "203.0.113.50" and not allowed(via_proxy, allow)


def test_parse_address_refuses_hostnames_and_keeps_v6():
    assert parse_address("example.com") is None
    assert str(parse_address("2001:db8::1")) == "2001:db8::1"
