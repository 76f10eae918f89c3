"""The sans-IO AMQP 0-9-1 core: bytes in, events out; intents in, bytes out. No sockets, no awaits.

`ConnectionState` (connection.py) is the one state machine a transport feeds; it keeps one
`ChannelState` (channel.py) per open channel and hands back `Event`s (events.py), deliveries being the
`Message` itself (message.py). frames.py is the codec; header_table.py edits a message's header table
without re-encoding it.
"""
