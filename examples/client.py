#!/usr/bin/env python3
"""A walletd client in Python, standard library only (docs/api.md).

It creates a deposit and a purchase, each with an Idempotency-Key, retries each one safely
(the same key and body give back the same event, marked `Idempotent-Replayed: true`, and
never a second one), shows that reusing a key for another body is refused, reads the balance,
and pages through the compensation feed.

    WALLET_TOKEN=... python3 examples/client.py --url https://127.0.0.1:8443 --ca DIR/ca.crt

Options may also come from the environment: WALLET_URL, WALLET_TOKEN, WALLET_CA,
WALLET_CLIENT_CERT and WALLET_CLIENT_KEY (mutual TLS). Prefer the environment for the token:
command-line arguments are visible to other users of the machine.

Exit status: 0 when every step behaved as the API documents, 1 otherwise, 2 on bad usage.
"""

import argparse
import json
import os
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Statuses worth retrying with the same key: the region is restoring, shutting down or
# (storage_unavailable) going away; a connection error or a timeout is retried as well.
RETRY_STATUSES = {502, 503, 504}


class ApiError(Exception):
    """An answer the API documents as an error, or no answer at all."""


class Client:
    def __init__(self, url, token, ca=None, cert=None, key=None, timeout=10.0, attempts=5):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self.context = None
        if self.url.startswith("https://"):
            # Trust the given CA (e.g. the ca.crt of `walletd init --tls`), else the system's.
            self.context = ssl.create_default_context(cafile=ca)
            if cert:
                self.context.load_cert_chain(cert, key)

    def request(self, method, path, body=None, idempotency_key=None):
        """One HTTP exchange: (status, headers, JSON body)."""
        data = None
        headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as r:
                return r.status, r.headers, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": {"code": "not_json", "message": raw[:200].decode(errors="replace")}}
            return e.code, e.headers, payload

    def request_with_retries(self, method, path, body=None, idempotency_key=None):
        """Retries transport errors and 502/503/504 with back-off. Safe for a POST only with an
        Idempotency-Key: the region answers a repeated key with the original result."""
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                status, headers, payload = self.request(method, path, body, idempotency_key)
                if status not in RETRY_STATUSES:
                    return status, headers, payload
                why = "HTTP %d %s" % (status, error_code(payload))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                why = str(e)
            if attempt == self.attempts:
                raise ApiError("%s %s: gave up after %d attempts: %s" % (method, path, attempt, why))
            print("  retrying %s %s (%s)" % (method, path, why), file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise ApiError("unreachable")

    def transaction(self, account, kind, amount, currency, key, reference=None):
        body = {"type": kind, "amount": amount, "currency": currency}
        if reference is not None:
            body["reference"] = reference
        path = "/v1/accounts/%s/transactions" % urllib.parse.quote(account, safe="")
        return self.request_with_retries("POST", path, body, key)

    def compensations(self, limit):
        """Pages through the compensation feed: yields (page number, entries). `next` is always
        a cursor (a consumer keeps the last one and polls from it); a short page is the end."""
        after = None
        page = 0
        while True:
            query = {"limit": str(limit)}
            if after is not None:
                query["after"] = after
            status, _, payload = self.request_with_retries(
                "GET", "/v1/compensations?" + urllib.parse.urlencode(query)
            )
            if status != 200:
                raise ApiError("GET /v1/compensations: HTTP %d %s" % (status, error_code(payload)))
            entries = payload["compensations"]
            page += 1
            yield page, entries, payload["next"]
            if len(entries) < limit:
                return
            after = payload["next"]


def error_code(payload):
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"].get("code", "?")
    return "?"


def expect(ok, what):
    if not ok:
        raise ApiError(what)


def created(status, payload, what):
    expect(status == 201, "%s: expected 201, got %d %s" % (what, status, error_code(payload)))
    return payload


def create_and_retry(c, acct, kind, amount, key, reference):
    """Sends a transaction, prints it, then sends it again with the same key and body: the
    retry must give back the same event, marked as replayed. Returns the event."""
    s, h, d = c.transaction(acct, kind, amount, "USD", key, reference)
    ev = created(s, d, kind)
    print("%s %s %s %s balance %s" % (kind, ev["id"], ev["amount"], ev["currency"],
                                     ev["balance"]["provisional"]))
    s, h, d = c.transaction(acct, kind, amount, "USD", key, reference)
    again = created(s, d, kind + " retry")
    expect(again["id"] == ev["id"], "%s retry made a new event %s" % (kind, again["id"]))
    expect(h.get("Idempotent-Replayed") == "true", "%s retry not marked as replayed" % kind)
    print("%s retry %s replayed" % (kind, again["id"]))
    return ev


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("WALLET_URL"), help="region base URL")
    p.add_argument("--token", default=os.environ.get("WALLET_TOKEN"), help="client token")
    p.add_argument("--ca", default=os.environ.get("WALLET_CA"), help="CA certificate (PEM)")
    p.add_argument("--cert", default=os.environ.get("WALLET_CLIENT_CERT"), help="mTLS certificate")
    p.add_argument("--key", default=os.environ.get("WALLET_CLIENT_KEY"), help="mTLS key")
    p.add_argument("--account", default="py-" + secrets.token_hex(4), help="account id")
    p.add_argument("--page-limit", type=int, default=100, help="compensations per page (1-1000)")
    a = p.parse_args()
    if not a.url or not a.token:
        p.error("--url and --token (or WALLET_URL and WALLET_TOKEN) are required")
    if not 1 <= a.page_limit <= 1000:
        p.error("--page-limit must be 1 to 1000")

    c = Client(a.url, a.token, ca=a.ca, cert=a.cert, key=a.key)
    acct = a.account
    print("account %s at %s" % (acct, c.url))

    # A deposit and a purchase, each sent twice: the same key and body give back the same event.
    create_and_retry(c, acct, "deposit", "100.00", acct + "-deposit-1", "top-up")
    pkey = acct + "-order-7781"
    create_and_retry(c, acct, "purchase", "30.10", pkey, "order 7781")

    # The same key with another body is refused: a new attempt needs a new key.
    s, h, d = c.transaction(acct, "purchase", "99.00", "USD", pkey, "order 7781")
    expect(s == 409 and error_code(d) == "idempotency_conflict",
           "reused key: expected 409 idempotency_conflict, got %d %s" % (s, error_code(d)))
    print("reused key with another body: 409 idempotency_conflict")

    # The balance counts each event once.
    path = "/v1/accounts/%s/balances" % urllib.parse.quote(acct, safe="")
    s, _, d = c.request_with_retries("GET", path)
    expect(s == 200, "balances: HTTP %d %s" % (s, error_code(d)))
    usd = [b for b in d["balances"] if b["currency"] == "USD"]
    expect(len(usd) == 1 and usd[0]["provisional"] == "69.90",
           "balances: expected provisional 69.90 USD, got %r" % d["balances"])
    print("balance USD provisional %s settled %s" % (usd[0]["provisional"], usd[0]["settled"]))

    # The compensation feed, page by page.
    total, pages, cursor = 0, 0, None
    for pages, entries, cursor in c.compensations(a.page_limit):
        for e in entries:
            print("compensation %s %s %s %s %s cause %s" % (
                e["id"], e["type"], e["account"], e["delta"], e["currency"], e["cause"]))
        total += len(entries)
    print("compensations %d in %d pages, resume from %s" % (total, pages, cursor))
    print("ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ApiError, KeyError, TypeError, ValueError, ssl.SSLError, OSError) as e:
        print("client.py: %s" % e, file=sys.stderr)
        sys.exit(1)
