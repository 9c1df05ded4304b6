"""regionstream's benchmark harness: ``make bench`` (``python -m bench``).

Four scenarios (issue #5) against a private ``redis-server`` on loopback, each measured against a
baseline consumer with upstream's shape in the same run: the seed's cycle through a 100 ms RTT
proxy, drain rate, latency under steady load, and scaling with memory. Results go to
``bench/results/`` as JSON and PNG plots.
"""
