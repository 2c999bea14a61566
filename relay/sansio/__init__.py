"""The relay's rules, free of I/O.

Everything in this package is pure: events come in, commands go out, and time
is passed in as a number. Nothing here imports asyncio, sockets, clocks,
logging or metrics libraries (``tests/test_layering.py`` checks it), so every
rule is tested as a plain script and the I/O edges only translate.
"""
