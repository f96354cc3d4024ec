"""A small catalogue service: Starlette under uvicorn, SQLite underneath. The proposer edits this file.

    API_DB=catalogue.db API_PORT=8000 python app.py

serves the endpoints that data.py documents (and checks): item look-ups, a filtered search, per-
category statistics, a stock update, and a computed /primes/{n}. The knobs below are the usual
levers of a Python web service; their first values are what a plain `pip install starlette uvicorn`
runs with a first, straightforward version of the code.
"""

import functools
import itertools
import json
import math
import os
import sqlite3
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# ---- knobs ---------------------------------------------------------------------------------------
WORKERS = 1             # uvicorn worker processes (each a full copy of the app; they share the port)
BACKLOG = 128           # listen() backlog: connections the kernel queues before accept()
KEEPALIVE_S = 5         # seconds an idle keep-alive connection is held open
LIMIT_CONCURRENCY = 0   # connections+requests in flight per worker before uvicorn answers 503 (0: no limit)
ACCESS_LOG = 1          # 1: one log line per request (uvicorn's default); 0: no access log
HTTP_PARSER = 0         # 0: h11, pure Python (plain uvicorn); 1: httptools, C (uvicorn[standard])
EVENT_LOOP = 0          # 0: asyncio's own loop; 1: uvloop (libuv)
JSON_INDENT = 2         # pretty-printed responses (json's pure-Python encoder); 0: compact (its C encoder)
ORJSON = 0              # 1: serialize with orjson instead of the json module
REUSE_DB = 0            # 0: a fresh SQLite connection per request; 1: one per worker, kept open
SQLITE_CACHE_KB = 2000  # SQLite's page cache per connection, KiB
SQLITE_MMAP_MB = 0      # memory-map this much of the database file (0: plain reads)
PRIME_CACHE = 0         # entries of the LRU cache of /primes answers (a pure function; 0: no cache)
# --------------------------------------------------------------------------------------------------

MAX_PRIME_N = 200_000
MOD = 1_000_000_007
DB_PATH = os.environ.get("API_DB", "catalogue.db")


def dumps(obj) -> bytes:
    if ORJSON:
        import orjson

        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if JSON_INDENT > 0 else 0)
    return json.dumps(obj, indent=JSON_INDENT if JSON_INDENT > 0 else None,
                      separators=None if JSON_INDENT > 0 else (",", ":")).encode()


def reply(obj, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


def _open() -> sqlite3.Connection:
    con = sqlite3.connect(DB_PATH, isolation_level=None, check_same_thread=False)
    con.execute(f"PRAGMA cache_size=-{int(SQLITE_CACHE_KB)}")
    if SQLITE_MMAP_MB > 0:
        con.execute(f"PRAGMA mmap_size={int(SQLITE_MMAP_MB) << 20}")
    con.execute("PRAGMA busy_timeout=5000")
    return con


_shared: sqlite3.Connection | None = None


def db() -> sqlite3.Connection:
    """The connection for this request: the worker's own when REUSE_DB, else a new one."""
    global _shared
    if not REUSE_DB:
        return _open()
    if _shared is None:
        _shared = _open()
    return _shared


def done(con: sqlite3.Connection) -> None:
    if not REUSE_DB:
        con.close()


ITEM_FIELDS = ("id", "name", "category", "price_cents", "stock", "rating")


async def health(request: Request) -> Response:
    return reply({"ok": True})


async def item(request: Request) -> Response:
    con = db()
    try:
        row = con.execute("SELECT id, name, category, price_cents, stock, rating FROM items WHERE id = ?",
                          (request.path_params["id"],)).fetchone()
    finally:
        done(con)
    return reply(dict(zip(ITEM_FIELDS, row))) if row else reply({"error": "not found"}, 404)


async def search(request: Request) -> Response:
    q = request.query_params
    try:
        category, max_price, limit = q["category"], int(q["max_price"]), int(q.get("limit", "10"))
    except (KeyError, ValueError):
        return reply({"error": "category, max_price (int) and limit (int) are required"}, 400)
    limit = max(1, min(limit, 50))
    con = db()
    try:
        found = con.execute("SELECT id, name, price_cents FROM items WHERE category = ? AND price_cents <= ? "
                            "ORDER BY price_cents, id LIMIT ?", (category, max_price, limit)).fetchall()
    finally:
        done(con)
    return reply({"category": category, "max_price": max_price,
                  "items": [{"id": i, "name": n, "price_cents": p} for i, n, p in found]})


async def stats(request: Request) -> Response:
    category = request.path_params["category"]
    con = db()
    try:
        count, avg, stock = con.execute("SELECT COUNT(*), AVG(price_cents), SUM(stock) FROM items WHERE category = ?",
                                        (category,)).fetchone()
        top = con.execute("SELECT id FROM items WHERE category = ? ORDER BY rating DESC, id LIMIT 1",
                          (category,)).fetchone()
    finally:
        done(con)
    if not count:
        return reply({"error": "not found"}, 404)
    return reply({"category": category, "count": count, "avg_price_cents": round(avg, 2),
                  "total_stock": stock, "top_rated": top[0]})


async def stock(request: Request) -> Response:
    try:
        delta = int((await request.json())["delta"])
    except (ValueError, KeyError, TypeError):
        return reply({"error": "body must be {\"delta\": <int>}"}, 400)
    item_id = request.path_params["id"]
    con = db()
    try:
        cur = con.execute("UPDATE items SET stock = stock + ? WHERE id = ? AND stock + ? >= 0 RETURNING stock",
                          (delta, item_id, delta))
        row = cur.fetchone()
        if row is None:
            exists = con.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone()
    finally:
        done(con)
    if row is None:
        return reply({"error": "insufficient stock"}, 409) if exists else reply({"error": "not found"}, 404)
    return reply({"id": item_id, "stock": row[0]})


def primes_upto(n: int) -> dict:
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = 0
    if n >= 1:
        sieve[1] = 0
    for i in range(2, math.isqrt(n) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n + 1, i)))
    primes = list(itertools.compress(range(n + 1), sieve))
    return {"n": n, "count": len(primes), "largest": primes[-1] if primes else 0, "sum_mod": sum(primes) % MOD}


if PRIME_CACHE > 0:
    primes_upto = functools.lru_cache(maxsize=int(PRIME_CACHE))(primes_upto)


async def primes(request: Request) -> Response:
    n = request.path_params["n"]
    if not 1 <= n <= MAX_PRIME_N:
        return reply({"error": f"n must be between 1 and {MAX_PRIME_N}"}, 400)
    return reply(primes_upto(n))


app = Starlette(routes=[
    Route("/health", health),
    Route("/items/{id:int}", item),
    Route("/items/{id:int}/stock", stock, methods=["POST"]),
    Route("/search", search),
    Route("/stats/{category}", stats),
    Route("/primes/{n:int}", primes),
])


def main() -> None:
    import uvicorn

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    uvicorn.run(
        "app:app" if WORKERS > 1 else app,  # several workers re-import the app by name
        app_dir=here,
        host=os.environ.get("API_HOST", "127.0.0.1"),
        port=int(os.environ.get("API_PORT", "8000")),
        workers=max(1, int(WORKERS)),
        backlog=max(1, int(BACKLOG)),
        timeout_keep_alive=max(1, int(KEEPALIVE_S)),
        limit_concurrency=int(LIMIT_CONCURRENCY) if LIMIT_CONCURRENCY > 0 else None,
        access_log=bool(ACCESS_LOG),
        log_level="info" if ACCESS_LOG else "warning",
        http="httptools" if HTTP_PARSER else "h11",
        loop="uvloop" if EVENT_LOOP else "asyncio",
    )


if __name__ == "__main__":
    main()
