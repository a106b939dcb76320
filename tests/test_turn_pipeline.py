"""TurnPipeline: commands of one event-loop turn share a pipeline, each caller gets its own answer."""

from __future__ import annotations

import asyncio

import redis
from redis.exceptions import RedisError, ResponseError

from service.redis_client import TurnPipeline, async_client


def test_callers_in_one_turn_share_one_round_trip_and_each_gets_its_reply(redis_factory):
    server = redis_factory()
    sync = redis.Redis.from_url(server.url)
    for n in range(50):
        sync.hset(f"job:{n}", mapping={"id": str(n), "status": "queued"})
    sync.set("plain", "x")

    async def main() -> tuple[list[object], int, int]:
        client = async_client(server.url)
        batched = TurnPipeline(client)
        calls = [batched.submit("HGETALL", f"job:{n}") for n in range(50)]
        calls.append(batched.submit("HGETALL", "plain"))  # WRONGTYPE: this caller's error only
        calls.append(batched.submit("HGETALL", "missing"))
        replies = await asyncio.gather(*calls, return_exceptions=True)
        reads = sync.info("commandstats")["cmdstat_hgetall"]["calls"]
        clients = sync.info("clients")["connected_clients"]
        await client.aclose()
        return replies, reads, clients

    replies, reads, clients = asyncio.run(main())
    assert replies[:50] == [{"id": str(n), "status": "queued"} for n in range(50)]
    assert isinstance(replies[50], ResponseError) and "WRONGTYPE" in str(replies[50])
    assert replies[51] == {}
    assert reads == 52
    # this test's sync client and one connection for all 52 reads (52 concurrent commands of
    # their own would each have taken a pooled connection)
    assert clients == 2


def test_every_caller_hears_that_redis_is_down(redis_factory):
    server = redis_factory()
    url = server.url
    server.stop()

    async def main() -> list[object]:
        client = async_client(url)
        batched = TurnPipeline(client)
        replies = await asyncio.gather(
            *[batched.submit("HGETALL", f"k{n}") for n in range(5)], return_exceptions=True
        )
        await client.aclose()
        return replies

    replies = asyncio.run(main())
    assert len(replies) == 5
    for reply in replies:
        assert isinstance(reply, RedisError), reply


def test_later_turns_get_their_own_pipeline(redis_factory):
    turns = 3
    server = redis_factory()
    redis.Redis.from_url(server.url).set("k", "v")

    async def main() -> list[object]:
        client = async_client(server.url)
        batched = TurnPipeline(client)
        got = [await batched.submit("GET", "k") for _ in range(turns)]  # one after another
        await client.aclose()
        return got

    assert asyncio.run(main()) == ["v"] * turns


def test_a_command_sent_without_a_reply_runs_in_order_with_the_others(redis_factory):
    """What the rate limiter relies on: INCR then PEXPIRE on the counter it just made."""
    server = redis_factory()

    async def main() -> int:
        client = async_client(server.url)
        batched = TurnPipeline(client)
        counted = batched.submit("INCR", "hits")
        batched.send("PEXPIRE", "hits", 60_000)
        count = await counted
        await batched.submit("PING")  # the next turn: the PEXPIRE has run by now
        await client.aclose()
        return count

    assert asyncio.run(main()) == 1
    assert 0 < redis.Redis.from_url(server.url).pttl("hits") <= 60_000


def test_one_key_s_increments_in_a_turn_are_one_incrby_and_each_caller_gets_its_own_count(redis_factory):
    """The rate limiter's hits from one client in one turn: each request still sees the count
    its own INCR would have returned (so exactly `limit` of them are allowed), for one command."""
    server = redis_factory()
    sync = redis.Redis.from_url(server.url)
    sync.set("hits", 10)

    async def main() -> list[object]:
        client = async_client(server.url)
        batched = TurnPipeline(client)
        calls = []
        for _ in range(5):
            calls.append(batched.submit("INCR", "hits"))
            batched.send("PEXPIRE", "hits", 60_000)
            calls.append(batched.submit("INCR", "other"))
        replies = await asyncio.gather(*calls)
        await client.aclose()
        return replies

    replies = asyncio.run(main())
    assert replies[0::2] == [11, 12, 13, 14, 15]
    assert replies[1::2] == [1, 2, 3, 4, 5]
    assert sync.get("hits") == b"15"
    stats = sync.info("commandstats")
    assert stats["cmdstat_incrby"]["calls"] == 2 and "cmdstat_incr" not in stats
    assert stats["cmdstat_pexpire"]["calls"] == 1
    assert 0 < sync.pttl("hits") <= 60_000


def test_the_api_client_packs_commands_in_c_and_redis_reads_them_alike(redis_factory, monkeypatch):
    """async_client's connections pack with hiredis (redis-py's asyncio connection packs in
    Python): the same protocol bytes, so every kind of argument arrives intact, in a single
    command, a pipeline and a script call with many arguments (initiate's shape)."""
    import hiredis
    from redis.asyncio.connection import Connection

    packed_in_c: list[tuple[object, ...]] = []
    pack = hiredis.pack_command
    monkeypatch.setattr(hiredis, "pack_command", lambda args: packed_in_c.append(args) or pack(args))
    server = redis_factory()
    values = ["plain", "é ü 中", 1.5, -3, 2**70, b"\x00 bytes"]
    many = [f"field-{n}" for n in range(200)]

    async def main() -> tuple[object, ...]:
        client = async_client(server.url)
        connection = client.connection_pool.make_connection()
        for args in (("HSET", "k", "f", v) for v in values):
            assert b"".join(connection.pack_command(*args)) == b"".join(Connection().pack_command(*args))
        assert [args[3] for args in packed_in_c if args[0] in ("HSET", b"HSET")] == values
        for args in (("SET", "k", memoryview(b"mv")), ("CONFIG GET", "maxclients")):  # converted, split
            assert b"".join(connection.pack_command(*args)) == b"".join(Connection().pack_command(*args))
        await client.hset("h", mapping={str(n): v for n, v in enumerate(values)})
        single = {int(k): v for k, v in (await client.hgetall("h")).items()}
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("spaced key", "a b").get("spaced key").execute_command("CONFIG GET", "maxclients")
            piped = await pipe.execute()
        script = client.register_script("return #ARGV")
        counted = await script(keys=[], args=many)
        await client.aclose()
        return single, piped, counted

    single, piped, counted = asyncio.run(main())
    assert single == dict(enumerate(["plain", "é ü 中", "1.5", "-3", str(2**70), "\x00 bytes"]))
    assert piped[:2] == [True, "a b"] and "maxclients" in piped[2]  # "CONFIG GET": two words
    assert counted == 200
    assert any(len(args) > 200 for args in packed_in_c)  # the script call, in C too


def test_a_script_runs_on_the_turn_s_pipeline_and_is_loaded_again_after_a_flush(redis_factory):
    """run_script: EVALSHA with this turn's other commands; where Redis lost the script (a
    restart, a failover) SCRIPT LOAD, then EVALSHA again: every caller gets its own reply."""
    server = redis_factory()
    script = "return {KEYS[1], ARGV[1]}"

    async def turn() -> list[object]:
        client = async_client(server.url)
        batched = TurnPipeline(client)
        try:
            return await asyncio.gather(*(batched.run_script(script, [f"k{i}"], [i]) for i in range(3)))
        finally:
            await client.aclose()

    assert asyncio.run(turn()) == [["k0", "0"], ["k1", "1"], ["k2", "2"]]  # not loaded yet: loads
    conn = redis.Redis.from_url(server.url)
    conn.script_flush()
    conn.config_resetstat()
    assert asyncio.run(turn()) == [["k0", "0"], ["k1", "1"], ["k2", "2"]]
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in conn.info("commandstats").items()}
    assert calls["script|load"] >= 1 and "eval" not in calls, calls
