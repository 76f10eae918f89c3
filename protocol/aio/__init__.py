"""The asyncio transport around the sans-IO core: a `Connection` moves bytes between the socket and
`protocol.core`, and turns its events into futures and callbacks on `Channel`s."""
