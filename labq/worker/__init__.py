"""The lab host's side of the wire: what runs in a prefork worker.

In the worker's main process: the worker itself (:mod:`.prefork`), its
consumer (:mod:`.consumer`) and event loop (:mod:`.hub`), the heartbeat
(:mod:`.liveness`), and the request that kills a task's whole process tree
(:mod:`.killing`, with the stacks it takes first: :mod:`.child_stacks`).

In each prefork child: the task base (:mod:`.task_base`), ``@device_task``
(:mod:`.device_task`), the soft interrupt's gate (:mod:`.interrupt`) and
the result backend (:mod:`.backend`), which the main process uses too.
"""
