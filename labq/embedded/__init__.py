"""The embedded lab: everything ``labq up`` and ``labq demo`` start on one host.

The stack (:mod:`.stack`): a Redis server (:mod:`.redis_server`), prefork
workers, Flower and the simulated lab (:mod:`.sim`), as child processes
(:mod:`.processes`) on free loopback ports (:mod:`.ports`); the demo
(:mod:`.demo`) and the lab hosts in network namespaces (:mod:`.netlab`).

Neither a testscript nor a worker imports this package.
"""
