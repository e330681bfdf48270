"""The testscript's side of the wire.

A :class:`~labq.client.run.Run` checks each call (:mod:`.submission`),
builds its message (:mod:`.messages`) and publishes it (:mod:`.publish`,
:mod:`.wire`); then it reads the outcomes as they come (:mod:`.streams`,
:mod:`.progress`), settles the tasks of dead workers (:mod:`.dead_workers`),
cancels (:mod:`.cancel`) and reports (:mod:`.report`). :mod:`.pcall` is
pyATS's ``pcall`` on top of a run. What a run knows of its tasks is one
:class:`~labq.client.run_state.RunState`.

Nothing here runs on a worker.
"""
