"""The operator's task supervision (controller/operator.py: supervise), with real asyncio tasks.

The process-level behaviour (exit code 3, the restart taking over) is tested with a real
controller subprocess in tests/integration/test_controller_robustness.py; this is the rule.
"""

from __future__ import annotations

import asyncio

from controller.operator import supervise


async def _operator(stop: asyncio.Event) -> None:
    """Stands for kopf.operator: runs until the stop flag is set."""
    await stop.wait()


async def _forever(stop: asyncio.Event) -> None:
    await stop.wait()


def test_a_background_task_that_raises_stops_the_operator_and_is_reported():
    async def main():
        stop = asyncio.Event()

        async def dies():
            await asyncio.sleep(0.05)
            raise KeyError(("ns", "job"))

        kopf_task = asyncio.create_task(_operator(stop))
        died = await asyncio.wait_for(supervise(kopf_task, {asyncio.create_task(dies()): "resync loop"}, stop), 5)
        return died, stop.is_set(), kopf_task.done()

    assert asyncio.run(main()) == (True, True, True)


def test_a_background_task_that_returns_early_counts_as_dead():
    async def main():
        stop = asyncio.Event()

        async def returns():
            await asyncio.sleep(0.05)

        return await asyncio.wait_for(
            supervise(asyncio.create_task(_operator(stop)), {asyncio.create_task(returns()): "lease renewal"}, stop), 5
        )

    assert asyncio.run(main()) is True


def test_a_clean_stop_is_not_a_death():
    async def main():
        stop = asyncio.Event()
        kopf_task = asyncio.create_task(_operator(stop))
        background = {asyncio.create_task(_forever(stop)): "resync loop"}
        asyncio.get_running_loop().call_later(0.05, stop.set)  # SIGTERM
        return await asyncio.wait_for(supervise(kopf_task, background, stop), 5)

    assert asyncio.run(main()) is False
