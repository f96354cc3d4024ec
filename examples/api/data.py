"""The service's data and the truth it is checked against (protected: the proposer never edits it).

`build(path)` writes the SQLite catalogue the service serves: N_ITEMS products in CATEGORIES, the
same bytes for the same seed. `Reference` holds the same catalogue in memory and answers every
endpoint the way a correct service must, applying writes as they are made, so a response can be
checked against it at any moment of a load test (a stale or wrong answer differs from it).

The endpoints (all JSON):
    GET  /health                      {"ok": true}
    GET  /items/{id}                  the item, or 404 {"error": "not found"}
    GET  /search?category=C&max_price=P&limit=L
                                      {"category", "max_price", "items": [{id, name, price_cents}]}
                                      cheapest first (ties: lower id), at most L (1..50) items
    GET  /stats/{category}            {"category", "count", "avg_price_cents" (2 decimals),
                                       "total_stock", "top_rated" (highest rating, ties: lower id)}
                                      or 404 for an unknown category
    POST /items/{id}/stock  {"delta": n}   {"id", "stock"}: stock + n; 409 {"error": "insufficient
                                      stock"} if that would go below 0 (nothing changes); 404 unknown id
    GET  /primes/{n}                  1 <= n <= MAX_PRIME_N: {"n", "count", "largest", "sum_mod"}:
                                      the primes <= n, their count, the largest (0 if none) and
                                      their sum mod 1_000_000_007; 400 outside the range
"""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
from pathlib import Path

N_ITEMS = 5000
CATEGORIES = ["books", "garden", "kitchen", "toys", "music", "tools", "sports", "office", "games", "baby",
              "beauty", "auto", "pets", "shoes", "health", "lights", "paint", "bikes", "camera", "travel"]
MAX_PRIME_N = 200_000
MOD = 1_000_000_007
SEED = 20240607
_WORDS = ["red", "blue", "quiet", "swift", "small", "large", "smart", "classic", "solid", "bright",
          "lamp", "chair", "kettle", "rope", "brush", "clock", "drum", "kite", "mug", "bag"]


def rows(seed: int = SEED) -> list[tuple]:
    """The catalogue: (id, name, category, price_cents, stock, rating), ids 1..N_ITEMS."""
    rng = random.Random(seed)
    out = []
    for i in range(1, N_ITEMS + 1):
        name = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {i}"
        out.append((i, name, rng.choice(CATEGORIES), rng.randint(99, 99_999), rng.randint(0, 500),
                    round(rng.uniform(1.0, 5.0), 2)))
    return out


def build(path: str | Path, seed: int = SEED) -> Path:
    """Write a fresh catalogue database at PATH (WAL mode, indexed for /search and /stats)."""
    path = Path(path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, "
                "price_cents INTEGER NOT NULL, stock INTEGER NOT NULL, rating REAL NOT NULL)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", rows(seed))
    con.execute("CREATE INDEX items_category_price ON items (category, price_cents, id)")
    con.commit()
    con.close()
    return path


def primes_answer(n: int) -> dict:
    """The /primes/{n} body, computed independently of the service (a plain sieve)."""
    sieve = bytearray([1]) * (n + 1)
    sieve[0:2] = b"\x00\x00"[: min(2, n + 1)]
    for i in range(2, math.isqrt(n) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n + 1, i)))
    primes = list(itertools.compress(range(n + 1), sieve))
    return {"n": n, "count": len(primes), "largest": primes[-1] if primes else 0, "sum_mod": sum(primes) % MOD}


class Reference:
    """The correct answers, kept up to date with the writes a checker makes."""

    def __init__(self, seed: int = SEED):
        self.items = {r[0]: dict(zip(("id", "name", "category", "price_cents", "stock", "rating"), r)) for r in rows(seed)}
        self._primes: dict[int, dict] = {}

    def item(self, item_id: int) -> tuple[int, dict]:
        it = self.items.get(item_id)
        return (200, dict(it)) if it else (404, {"error": "not found"})

    def search(self, category: str, max_price: int, limit: int) -> tuple[int, dict]:
        hits = sorted((it for it in self.items.values() if it["category"] == category and it["price_cents"] <= max_price),
                      key=lambda it: (it["price_cents"], it["id"]))[:limit]
        return 200, {"category": category, "max_price": max_price,
                     "items": [{"id": it["id"], "name": it["name"], "price_cents": it["price_cents"]} for it in hits]}

    def stats(self, category: str) -> tuple[int, dict]:
        its = [it for it in self.items.values() if it["category"] == category]
        if not its:
            return 404, {"error": "not found"}
        top = min(its, key=lambda it: (-it["rating"], it["id"]))
        return 200, {"category": category, "count": len(its),
                     "avg_price_cents": round(sum(it["price_cents"] for it in its) / len(its), 2),
                     "total_stock": sum(it["stock"] for it in its), "top_rated": top["id"]}

    def stock(self, item_id: int, delta: int) -> tuple[int, dict]:
        it = self.items.get(item_id)
        if it is None:
            return 404, {"error": "not found"}
        if it["stock"] + delta < 0:
            return 409, {"error": "insufficient stock"}
        it["stock"] += delta
        return 200, {"id": item_id, "stock": it["stock"]}

    def primes(self, n: int) -> tuple[int, dict]:
        if not 1 <= n <= MAX_PRIME_N:
            return 400, {"error": f"n must be between 1 and {MAX_PRIME_N}"}
        if n not in self._primes:
            self._primes[n] = primes_answer(n)
        return 200, dict(self._primes[n])

    def answer(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """The (status, JSON body) a correct service returns for one request."""
        route, _, query = path.partition("?")
        parts = route.strip("/").split("/")
        args = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv)
        if method == "POST" and len(parts) == 3 and parts[0] == "items" and parts[2] == "stock":
            return self.stock(int(parts[1]), int((body or {})["delta"]))
        if parts[0] == "health":
            return 200, {"ok": True}
        if parts[0] == "items" and len(parts) == 2:
            return self.item(int(parts[1]))
        if parts[0] == "search":
            return self.search(args["category"], int(args["max_price"]), int(args["limit"]))
        if parts[0] == "stats":
            return self.stats(parts[1])
        if parts[0] == "primes":
            return self.primes(int(parts[1]))
        raise ValueError(f"no such endpoint: {method} {path}")


def same(expected: object, got: object) -> bool:
    """JSON equality, with floats compared to 1e-6 (a serializer may print 4.1 as 4.1000000000000005)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(expected, got, rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(same(expected[k], got[k]) for k in expected)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(a, b) for a, b in zip(expected, got))
    return expected == got


def request_mix(count: int, seed: int = SEED) -> list[tuple[str, str, dict | None]]:
    """COUNT read requests in the load's proportions: items 50%, search 20%, stats 15%, primes 15%
    (16 distinct n, so a cache of computed answers pays). The same list for the same seed."""
    rng = random.Random(seed)
    prime_ns = [rng.randint(5_000, 20_000) for _ in range(16)]
    out = []
    for _ in range(count):
        u = rng.random()
        if u < 0.50:
            path = f"/items/{rng.randint(1, N_ITEMS)}"
        elif u < 0.70:
            path = f"/search?category={rng.choice(CATEGORIES)}&max_price={rng.randint(1_000, 60_000)}&limit={rng.randint(5, 30)}"
        elif u < 0.85:
            path = f"/stats/{rng.choice(CATEGORIES)}"
        else:
            path = f"/primes/{rng.choice(prime_ns)}"
        out.append(("GET", path, None))
    return out
