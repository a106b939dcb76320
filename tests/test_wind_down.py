"""WindDown: finished SSE streams end only once the events other streams wait for have gone."""

from __future__ import annotations

import asyncio

from service.api.events import Subscription, WindDown

ENTRY = ("1-0", {"event": "progress", "data": "{}"})


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_endings_wait_for_undelivered_events_then_go_a_few_per_turn():
    async def main() -> None:
        wind_down = WindDown()
        busy = Subscription("job", wind_down)
        busy.put([ENTRY])
        busy.put([ENTRY])  # one subscription holding entries counts once
        assert wind_down.undelivered == 1
        endings = [asyncio.ensure_future(wind_down.wait()) for _ in range(3 * WindDown.PER_TURN)]
        await turns(5)
        assert not any(e.done() for e in endings), "an ending went before a waiting event"

        assert await busy.get(1) == [ENTRY, ENTRY]  # the stream takes its events
        assert wind_down.undelivered == 0
        await turns(2)
        first = sum(e.done() for e in endings)
        assert 0 < first <= WindDown.PER_TURN  # not all at once: new events get read in between
        await turns(10)
        assert all(e.done() for e in endings)
        # nothing waiting: returns without even a loop turn
        idle = wind_down.wait()
        try:
            idle.send(None)
            raise AssertionError("waited with nothing to wait for")
        except StopIteration:
            pass

    asyncio.run(main())


def test_a_stream_that_never_takes_its_events_holds_endings_only_max_wait():
    async def main() -> float:
        wind_down = WindDown()
        wind_down.MAX_WAIT_S = 0.3
        Subscription("job", wind_down).put([ENTRY])  # its stream is stuck: never takes it
        loop = asyncio.get_running_loop()
        started = loop.time()
        ending = asyncio.ensure_future(wind_down.wait())
        await turns(5)
        assert not ending.done()
        await asyncio.wait_for(ending, 5)
        return loop.time() - started

    assert asyncio.run(main()) >= 0.3


def test_dropping_a_subscription_with_entries_releases_the_endings():
    async def main() -> None:
        wind_down = WindDown()
        gone = Subscription("job", wind_down)
        gone.put([ENTRY])
        ending = asyncio.ensure_future(wind_down.wait())
        await turns(3)
        assert not ending.done()
        gone.drop()  # its client left before taking the entry
        gone.drop()  # idempotent: counted once
        assert wind_down.undelivered == 0
        await asyncio.wait_for(ending, 1)

    asyncio.run(main())
