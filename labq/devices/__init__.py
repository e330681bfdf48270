"""The device side: what a lab is made of and how a task reaches a device.

The testbed (:mod:`.testbed`, read by :mod:`.testbed_yaml`), the route of a
device's tasks to its lab segment's queue (:mod:`.routing`), device leases
(:mod:`.lease`, :mod:`.lease_scripts`) and the connection drivers
(:mod:`.drivers`). Both sides use it: the client routes, the worker leases
and connects.
"""
