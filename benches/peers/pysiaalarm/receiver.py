"""pysiaalarm as Home Assistant runs it: an asyncio SIAClient whose callback only counts.

    python receiver.py PORT ACCOUNTS [SECONDS]

Listens on 127.0.0.1:PORT for SIA DC-09 over TCP, unencrypted, with the accounts
pendant-sim's dc09-plain speaker uses (A00001 … A{ACCOUNTS:05X}). Stops on SIGTERM,
SIGINT or after SECONDS (default 600) and prints one JSON line of counts to stdout.
"""

import asyncio
import json
import signal
import sys

from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient


async def main(port: int, accounts: int, seconds: float) -> None:
    events = 0

    async def on_event(_event) -> None:
        # In Home Assistant the callback hands the event to the dispatcher; nothing is stored
        # before the ACK, which pysiaalarm has already written when this runs.
        nonlocal events
        events += 1

    client = SIAClient(
        "127.0.0.1",
        port,
        [SIAAccount(f"A{n:05X}") for n in range(1, accounts + 1)],
        on_event,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # asyncio's default backlog is 100; give the fleet's connect burst room so the
    # figures measure the message path, not SYN retries.
    await client.async_start(backlog=4096)
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    await asyncio.wait_for(client.async_stop(), 5)
    print(json.dumps({"events": events, "counts": vars(client.counts)}), flush=True)


if __name__ == "__main__":
    port = int(sys.argv[1])
    accounts = int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
    asyncio.run(main(port, accounts, seconds))
